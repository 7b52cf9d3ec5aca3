# A virtual gateway's HAL (firmware/hal/sim.py, its Wi-Fi station sim_wifi.py) and nothing else, driven over stdin/stdout in JSON
# lines, so host tests can check its clock and Wi-Fi rules under the real MicroPython interpreter.
#   micropython tests/sim_hal_agent.py FLASH_DIR      (FLASH_DIR holds config.cbor)
# Prints {"ready": true}, then one JSON line per command line:
#   {"op": "time"}                        -> {"s": time_s(), "ms": time_ms()}
#   {"op": "set_time", "s": n}            -> {"ok": true}
#   {"op": "uplink", "timeout_ms": n}     -> {"ok": bool, "channel": n}
#   {"op": "up"}                          -> {"up": bool, "channel": n}
#   {"op": "ntp"}                         -> {"t": n} | {"err": errno}
#   {"op": "connect", "port": n}          -> {"ok": true} | {"err": errno}   (TCP to 127.0.0.1)
#   {"op": "bcast", "hex": payload}       -> {"sent": bool}
#   {"op": "quit"}                        -> {"bye": true}, exits
import sys

_root = sys.argv[0].rsplit("/tests/", 1)[0] if "/tests/" in sys.argv[0] else "."
if _root not in sys.path:
    sys.path.insert(0, _root)

import asyncio  # noqa: E402
import binascii  # noqa: E402
import json  # noqa: E402

from firmware.config import load_config  # noqa: E402
from firmware.fsutil import PosixFS  # noqa: E402
from firmware.hal.sim import SimHal  # noqa: E402


def say(obj):
    print(json.dumps(obj))
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


async def handle(hal, req):
    op = req.get("op")
    try:
        if op == "time":
            return {"s": hal.time_s(), "ms": hal.time_ms()}
        if op == "set_time":
            hal.set_time_s(req["s"])
            return {"ok": True}
        if op == "uplink":
            ok = await hal.wifi().join("", "", req.get("timeout_ms", 1000))
            return {"ok": ok, "channel": hal.wifi().channel()}
        if op == "up":
            return {"up": hal.wifi().isconnected(), "channel": hal.wifi().channel()}
        if op == "ntp":
            return {"t": hal.wifi().ntp()}
        if op == "connect":
            _, w = await hal.wifi().open_connection("127.0.0.1", req["port"])
            w.close()
            return {"ok": True}
        if op == "bcast":
            return {"sent": await hal.radio.asend(b"\xff" * 6, binascii.unhexlify(req["hex"]))}
        return {"exc": "unknown op"}
    except OSError as e:
        return {"err": e.args[0]}


async def main():
    fs = PosixFS(sys.argv[1])
    hal = SimHal(load_config(fs), fs, sys.argv[1])
    hal.radio.active(True)
    hal.radio.add_peer(b"\xff" * 6)
    reader = asyncio.StreamReader(sys.stdin)
    say({"ready": True})
    while True:
        line = await reader.readline()
        if not line:
            break
        req = json.loads(line)
        if req.get("op") == "quit":
            say({"bye": True})
            break
        say(await handle(hal, req))


asyncio.run(main())
