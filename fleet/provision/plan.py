"""Pure planning: what a board needs written, given what it holds (no board, no I/O), and the
USB time a real ESP32 would take for the traffic measured."""
import hashlib
from dataclasses import dataclass

# ---- time estimates for a real ESP32 ---------------------------------------------------------
# wire time: every byte both ways at 10 bits (8N1) per byte -- but host-to-board bytes of a
#   raw-paste exec are flow-controlled: stock MicroPython grants 128-byte windows, at most two in
#   flight, each granted back over the USB-UART bridge (round trip ~4 ms on a CP210x/CH340 with
#   1 ms USB frames; an FTDI at its default 16 ms latency timer is four times worse), so upload
#   runs at most 256 bytes per round trip (~64 KB/s): irrelevant at 115200 baud, the limit at
#   921600;
# per exec: raw-paste handshake, compile of a ~5 KB exec on a 160 MHz ESP32, the end-of-exec
#   round trips -- 15 ms;
# flash: littlefs on the ESP32's SPI NOR flash erases 4 KB sectors (~45 ms each) and programs
#   pages: ~64 KB/s effective;
# resets: the soft reset at connect (~1 s) and the hard reset before the self-test (~2 s: ROM,
#   bootloader, MicroPython start). The self-test wait itself (sensor warm-up, >= 30 s) is the
#   same on both and is reported separately.
# Note: MicroPython's ESP32 REPL UART runs at 115200; 921600 needs a build (or a boot.py) that
# sets the REPL UART faster -- `--baud` then matches it.
EST_EXEC_OVERHEAD_S = 0.015
EST_USB_RTT_S = 0.004
EST_PASTE_BYTES_IN_FLIGHT = 256
EST_FLASH_BYTES_PER_S = 64 * 1024
EST_SOFT_RESET_S = 1.0
EST_HARD_RESET_S = 2.0
ESTIMATE_BAUDS = (115200, 921600)


def estimate_usb_seconds(bytes_sent, bytes_received, execs, bytes_written, baud):
    """Estimated USB session time on a real ESP32 at `baud` for the traffic measured on a board:
    upload time (line rate, or the raw-paste window limit if slower) + download time + a fixed cost
    per exec + flash programming + the soft and hard resets. The EST_* constants hold the
    assumptions (see the comment above them)."""
    up_s = max(bytes_sent * 10 / baud, bytes_sent * EST_USB_RTT_S / EST_PASTE_BYTES_IN_FLIGHT)
    down_s = bytes_received * 10 / baud
    return (up_s + down_s + execs * EST_EXEC_OVERHEAD_S + bytes_written / EST_FLASH_BYTES_PER_S
            + EST_SOFT_RESET_S + EST_HARD_RESET_S)


@dataclass
class CopyPlan:
    """What to do to a board so that it boots `bundle` with the wanted root files.

    target: the slot to write ("a"/"b": the running one only if it already holds exactly this
    build); to_write: slot path -> bytes; stale: slot paths to remove; staged: "<root>.new" ->
    bytes to write; renames: (staged, root) pairs the commit makes; skipped: files already
    identical; new_pointer: the /active text to commit; pointer_changes: it differs from the
    board's; need_bytes: flash the writes take (4 KB blocks)."""

    target: str
    to_write: dict
    stale: list
    staged: dict
    renames: list
    skipped: int
    new_pointer: str
    pointer_changes: bool
    need_bytes: int
    rom_image: bytes | None = None  # the app as a ROMFS image for the target's romfs partition


def plan_copy(found, pointer, bundle, want_root, rom_image=None):
    """The plan for a board holding `found` ({path: (size, sha256 hex)} of both slots and the root
    files, as MpBoard.hash_files gives), whose slot pointer is `pointer` (the parsed /active, or
    None), to boot `bundle` with `want_root` ({root path: bytes}). rom_image: the bundle's files
    as a ROMFS image when the board has romfs partitions it fits: the target slot is then written
    as that image into its partition (its bytecode runs in place, off the heap) and its
    directory's files are removed. Pure: no board, no I/O."""
    from firmware import boot as fw_boot

    def slot_matches(s):
        have = {p[len(s) + 2:]: v for p, v in found.items() if p.startswith(f"/{s}/")}
        return set(have) == set(bundle.files) and all(have[p][1] == bundle.digests[p] for p in bundle.files)

    if pointer is None:
        target = "a"
    elif slot_matches(pointer["slot"]):
        target = pointer["slot"]
    else:
        target = "b" if pointer["slot"] == "a" else "a"
    prefix = f"/{target}/"
    to_write, skipped = {}, 0
    for rel, data in bundle.files.items():
        have = found.get(prefix + rel)
        if have is not None and have[1] == bundle.digests[rel]:
            skipped += 1
        else:
            to_write[prefix + rel] = data
    stale = [p for p in found if p.startswith(prefix) and p[len(prefix):] not in bundle.files]
    if rom_image is not None:
        if to_write:  # the slot does not hold this build: the image goes into its partition
            skipped -= len(bundle.files) - len(to_write)
            to_write = {}
            stale = [p for p in found if p.startswith(prefix)]  # the partition, not the directory, holds it
        else:
            rom_image = None  # the running slot already holds exactly this build
    staged, renames = {}, []
    for path, data in want_root.items():
        digest = hashlib.sha256(data).hexdigest()
        have = found.get(path)
        if have is not None and have[1] == digest:
            skipped += 1
            continue
        new = path + ".new"
        renames.append((new, path))
        have_new = found.get(new)
        if have_new is None or have_new[1] != digest:
            staged[new] = data
    failed = pointer.get("failed", 0) if pointer else 0
    new_pointer = fw_boot.format_kv(fw_boot.confirmed_pointer(target, bundle.seq, bundle.version, failed))
    pointer_changes = pointer is None or fw_boot.format_kv(pointer) != new_pointer or "/active" not in found
    need = sum(-(-len(d) // 4096) * 4096 for d in list(to_write.values()) + list(staged.values()))
    return CopyPlan(target, to_write, stale, staged, renames, skipped, new_pointer, pointer_changes, need, rom_image)
