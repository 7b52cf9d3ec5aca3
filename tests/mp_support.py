"""Shared by host tests: the repository root and the real MicroPython interpreter.
(Not in conftest.py: hil_tests/ has a conftest too, and `from conftest import` would pick
whichever directory pytest put first on sys.path.)"""
import os

from fleet.sim.rig import micropython_bin  # noqa: F401 - the one lookup, shared with the rig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
