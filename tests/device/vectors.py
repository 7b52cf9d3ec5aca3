# Streaming reader for protocol/vectors/*.json (one vector per line, see tools/gen_vectors.py),
# so MicroPython with a 64k heap never holds the whole file. Shared by device and host tests.
import gc
import json
import sys

# A collection per vector keeps a 64k MicroPython heap unfragmented; on CPython it only costs
# (~80 ms each with pytest's objects in the heap: 26 s of collecting test_protocol_host.py)
_SMALL_HEAP = sys.implementation.name == "micropython"

# Tests run with the repository root as the working directory (pytest and tests/mp_run.py);
# under MicroPython this module may be imported as precompiled .mpy from elsewhere.
VECTOR_DIR = "protocol/vectors"


def head(name):
    """Return the file's header object (description, keys) without its vectors."""
    with open(VECTOR_DIR + "/" + name) as f:
        first = f.readline()
    return json.loads(first[: first.rindex(', "vectors": [')] + "}")


def each(name):
    """Yield the vectors of protocol/vectors/<name> one at a time."""
    with open(VECTOR_DIR + "/" + name) as f:
        f.readline()
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                if _SMALL_HEAP:
                    gc.collect()  # keep a 64k heap unfragmented between vectors
                yield json.loads(line[:-1] if line.endswith(",") else line)


def unhex(s):
    return bytes.fromhex(s)


def hexes(name, valid=True):
    """Yield just the bytes of the vectors whose `valid` matches — without parsing each whole
    line, for tests that need many inputs and little heap."""
    want = '"valid": true' if valid else '"valid": false'
    with open(VECTOR_DIR + "/" + name) as f:
        f.readline()
        for line in f:
            if want in line:
                i = line.index('"hex": "') + 8
                yield bytes.fromhex(line[i:line.index('"', i)])
