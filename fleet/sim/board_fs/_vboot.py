# Virtual board start-up script: `micropython -X heapsize=H -i _vboot.py` (see _vboard.py).
# It runs in the REPL's globals, so boot.py and main.py share them as on the board; it leaves no
# names of its own behind.
import _vboard

_vboard.boot(globals())
del _vboard
