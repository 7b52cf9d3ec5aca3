#!/usr/bin/env bash
# Build a 32-bit MicroPython unix port (the ESP32's object layout: 4-byte words, 16-byte GC
# blocks, 31-bit small ints) for the virtual rig and the device tests.
#
#   tools/build_mp32.sh SOURCE_TARBALL OUT_DIR   -> OUT_DIR/micropython32, OUT_DIR/mpy-cross32
#
# SOURCE_TARBALL: a MicroPython source release (.tar.gz/.tar.xz) holding ports/unix, e.g. the
# trimmed v1.28.0 one in ../shared/micropython32 (`make mp32` passes it). Needs a C compiler
# that builds 32-bit programs (Debian: gcc-multilib). ~40 s on 2 cores. Does nothing when
# OUT_DIR/micropython32 exists, was built from these patches and has the rig's ROMFS segments. Exit 2 when it cannot build (the rig then uses 64 bits).
set -euo pipefail
tarball=${1:?usage: build_mp32.sh SOURCE_TARBALL OUT_DIR}
out=${2:?usage: build_mp32.sh SOURCE_TARBALL OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# An existing build is kept when it was built from these very patches (a stamp of tools/mp32
# and this script) and has the rig's ROMFS segments (tools/mp32/rig_romfs.c).
here=$(cd "$(dirname "$0")" && pwd)
stamp=$(cat "$here/build_mp32.sh" "$here"/mp32/* | sha256sum | cut -c1-16)
if [ -x "$out/micropython32" ] && [ "$(cat "$out/patches.stamp" 2>/dev/null)" = "$stamp" ] \
   && "$out/micropython32" -c "import vfs; vfs.rom_ioctl(1)" >/dev/null 2>&1; then
  echo "$out/micropython32"; exit 0
fi
if [ ! -f "$tarball" ]; then echo "build_mp32: no source tarball at $tarball" >&2; exit 2; fi
if ! echo 'int main(void){return 0;}' | cc -m32 -x c - -o /dev/null 2>/dev/null; then
  echo "build_mp32: the C compiler cannot build 32-bit programs: apt-get install gcc-multilib" >&2
  exit 2
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar xf "$tarball" -C "$src"
top=$(dirname "$(dirname "$(find "$src" -maxdepth 3 -type d -path '*/ports/unix' | head -n 1)")")
if [ ! -d "$top/ports/unix" ] || [ ! -d "$top/mpy-cross" ]; then
  echo "build_mp32: $tarball holds no MicroPython source (ports/unix, mpy-cross)" >&2; exit 2
fi
# The unix port flushes pending terminal input when its REPL switches the tty to raw mode
# (TCSAFLUSH); a board's UART never drops what the host sent (mpremote sends Ctrl-C then
# Ctrl-A right after a reset, and the virtual board relies on both arriving): switch now.
sed -i 's/tcsetattr(0, TCSAFLUSH, /tcsetattr(0, TCSANOW, /' "$top/ports/unix/unix_mphal.c"
grep -q 'TCSAFLUSH' "$top/ports/unix/unix_mphal.c" && { echo "build_mp32: could not patch unix_mphal.c" >&2; exit 2; }
# ROMFS segments backed by files, as a board's romfs flash partitions (tools/mp32/rig_romfs.c).
python3 "$(dirname "$0")/mp32/patch_unix.py" "$top" || exit 2
echo 'include("$(MPY_DIR)/extmod/asyncio")' > "$src/manifest.py"
# MICROPY_PY_THREAD_GIL=1, as the ESP32 port has it. The unix default (threads without a GIL)
# turns on MICROPY_ASYNC_KBD_INTR: the SIGINT handler raises KeyboardInterrupt at once, from
# inside any C code - also while the interpreter holds its (non-recursive) qstr mutex, which
# then stays locked: the next new name deadlocks the board for ever (seen in CI: a Ctrl-C into
# an app importing at boot, then "no MicroPython REPL answered"; the hung interpreter sat in
# futex_wait). With the GIL, Ctrl-C is a pending exception the VM raises between bytecodes, as
# on the board.
make -s -C "$top/mpy-cross" -j2 >"$src/mpy-cross.log" 2>&1 || { tail -20 "$src/mpy-cross.log" >&2; exit 2; }
make -s -C "$top/ports/unix" -j2 BUILD=build-32 PROG=micropython32 MICROPY_FORCE_32BIT=1 MICROPY_PY_THREAD_GIL=1 \
  MICROPY_PY_FFI=0 MICROPY_PY_BTREE=0 MICROPY_PY_SSL=0 FROZEN_MANIFEST="$src/manifest.py" \
  >"$src/unix.log" 2>&1 || { tail -20 "$src/unix.log" >&2; exit 2; }
cp "$top/ports/unix/build-32/micropython32" "$out/micropython32.tmp"
mv "$out/micropython32.tmp" "$out/micropython32"
cp "$top/mpy-cross/build/mpy-cross" "$out/mpy-cross32"
echo "$stamp" > "$out/patches.stamp"
echo "$out/micropython32"
