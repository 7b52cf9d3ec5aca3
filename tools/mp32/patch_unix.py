"""Patch a MicroPython unix port's main.c for the rig (tools/build_mp32.sh runs it).

    python patch_unix.py TOP   (TOP: the source tree holding ports/unix)

- ROMFS segments backed by files (rig_romfs.c beside this file, inserted; the port's own
  rom_ioctl, one empty built-in segment, removed), /rom on sys.path when mounted, and
  MICROPY_VFS_ROM_IOCTL on in the variant config (it is off on unix by default).
Fails (exit 2) when an anchor is missing, so a new MicroPython release is noticed, not half
patched.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(top):
    path = os.path.join(top, "ports", "unix", "main.c")
    with open(path) as f:
        src = f.read()
    own = re.search(r"#if MICROPY_VFS_ROM_IOCTL\n\nstatic uint8_t romfs_buf.*?\n#endif\n", src, re.S)
    anchor = "    mp_obj_list_init(MP_OBJ_TO_PTR(mp_sys_argv), 0);\n"
    if not own or src.count(anchor) != 1:
        print("patch_unix: %s is not the main.c this patch knows (v1.28)" % path, file=sys.stderr)
        return 2
    with open(os.path.join(HERE, "rig_romfs.c")) as f:
        ours = f.read()
    src = src[:own.start()] + src[own.end():]
    src = src.replace(anchor, "    #if MICROPY_VFS_ROM_IOCTL\n    rm_romfs_sys_path();\n    #endif\n\n" + anchor)
    # our functions must be declared before main() uses them: put them before the first function
    first = src.index("\nstatic ")
    src = src[:first] + "\n#if MICROPY_VFS_ROM_IOCTL\n" + ours + "#endif\n" + src[first:]
    with open(path, "w") as f:
        f.write(src)
    cfg = os.path.join(top, "ports", "unix", "variants", "mpconfigvariant_common.h")
    with open(cfg) as f:
        text = f.read()
    off = re.compile(r"#define MICROPY_VFS_ROM_IOCTL +\(0\)")
    if len(off.findall(text)) != 1:
        print("patch_unix: %s does not turn MICROPY_VFS_ROM_IOCTL off as v1.28 does" % cfg, file=sys.stderr)
        return 2
    with open(cfg, "w") as f:
        f.write(off.sub("#define MICROPY_VFS_ROM_IOCTL (1)", text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
