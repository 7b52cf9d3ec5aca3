# Virtual board start-up script: `micropython -X heapsize=H -i _vboot.py` (see _vboard.py).
# It runs in the REPL's globals, so boot.py and main.py share them as on the board; it leaves no
# names of its own behind.
try:  # the board's port code from its romfs segment (fleet/sim/board/flash.py port_segment): in place
    import sys

    import vfs

    port = vfs.rom_ioctl(2, 2)  # an int (-EINVAL) when the board has no such segment
    if not isinstance(port, int):
        vfs.mount(vfs.VfsRom(port), "/vport")  # unmounted by _vboard.boot once its imports are done
        sys.path.insert(0, "/vport")
    del port
    del sys, vfs
except (ImportError, AttributeError, OSError):
    pass
import _vboard

_vboard.boot(globals())
del _vboard
