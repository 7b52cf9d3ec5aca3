# A virtual node's radio and nothing else, driven over stdin/stdout in JSON lines, so host tests
# can exercise firmware/hal/sim_radio.py under MicroPython (and CPython) against a real medium.
#   micropython tests/sim_radio_agent.py MAC_HEX MY_PORT MEDIUM_PORT
# Prints {"ready": true}, then one JSON line per command line:
#   {"op": "add_peer"|"del_peer", "mac": hex}            -> {"ok": true} | {"err": [errno, name]}
#   {"op": "send", "mac": hex, "hex": payload_hex}        -> {"sent": bool} | {"err": ...} | {"exc": name}
#   {"op": "drain", "quiet_ms": n}                       -> {"frames": [[mac_hex, payload_hex, rssi], ...]}
#   {"op": "peers"}                                      -> {"peers": [mac_hex, ...], "any": bool}
#   {"op": "config", "rxbuf": n}                         -> {"rxbuf": n} (config(rxbuf=n), then config("rxbuf"))
#   {"op": "active", "on": bool}                         -> {"active": bool}
#   {"op": "stats"}                                      -> {"stats": [tx, tx_resp, tx_fail, rx, rx_dropped]}
#   {"op": "nomem", "n": k}                              -> {"ok": true}: the next k datagrams find no heap
#   {"op": "nomem_seen"}                                 -> {"nomem": n}: datagrams the loop found no heap for
#   {"op": "quit"}                                       -> {"bye": true}, exits
import sys

_root = sys.argv[0].rsplit("/tests/", 1)[0] if "/tests/" in sys.argv[0] else "."
if _root not in sys.path:
    sys.path.insert(0, _root)

import asyncio  # noqa: E402
import binascii  # noqa: E402
import json  # noqa: E402

from firmware.hal.sim_radio import SimRadio  # noqa: E402


def _hex(b):
    return binascii.hexlify(b).decode()


def _unhex(s):
    return binascii.unhexlify(s)


def say(obj):
    print(json.dumps(obj))
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


async def _wait_ms(aw, ms):
    if hasattr(asyncio, "wait_for_ms"):
        return await asyncio.wait_for_ms(aw, ms)
    return await asyncio.wait_for(aw, ms / 1000)


class _Lines:
    """stdin lines without blocking the loop (MicroPython: a StreamReader; CPython: a thread)."""

    def __init__(self):
        self._reader = asyncio.StreamReader(sys.stdin) if sys.implementation.name == "micropython" else None

    async def readline(self):
        if self._reader is not None:
            line = await self._reader.readline()
            return line.decode() if isinstance(line, bytes) else line
        return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def handle(radio, req):
    op = req.get("op")
    try:
        if op == "add_peer":
            radio.add_peer(_unhex(req["mac"]))
            return {"ok": True}
        if op == "del_peer":
            radio.del_peer(_unhex(req["mac"]))
            return {"ok": True}
        if op == "send":
            return {"sent": await radio.asend(_unhex(req["mac"]), _unhex(req["hex"]))}
        if op == "drain":
            frames = []
            while True:
                try:
                    mac, msg = await _wait_ms(radio.arecv(), req.get("quiet_ms", 300))
                except asyncio.TimeoutError:
                    break
                frames.append([_hex(mac), _hex(msg), radio.peers_table[mac][0]])
            return {"frames": frames}
        if op == "peers":
            return {"peers": [_hex(p[0]) for p in radio.get_peers()], "any": radio.any()}
        if op == "config":
            radio.config(rxbuf=req["rxbuf"])
            return {"rxbuf": radio.config("rxbuf")}
        if op == "active":
            return {"active": radio.active(req["on"])}
        if op == "stats":
            return {"stats": list(radio.stats())}
        if op == "nomem":  # the next n datagrams: taken off the socket, then no heap for them
            import firmware.hal.sim_radio as sr

            real, left = sr._recv, [req["n"]]

            def recv(sock):
                data = real(sock)
                if data and left[0]:
                    left[0] -= 1
                    raise MemoryError("memory allocation failed")
                return data

            sr._recv = recv
            return {"ok": True}
        if op == "nomem_seen":
            return {"nomem": radio.rx_nomem}
        return {"exc": "unknown op"}
    except OSError as e:
        return {"err": [e.args[0], e.args[1] if len(e.args) > 1 else ""]}
    except ValueError:
        return {"exc": "ValueError"}


async def main():
    mac, my_port, medium_port = _unhex(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    radio = SimRadio(mac, my_port, medium_port)
    radio.active(True)
    radio.add_peer(b"\xff" * 6)  # as the node shell does at start
    lines = _Lines()
    say({"ready": True})
    while True:
        line = await lines.readline()
        if not line:
            break
        req = json.loads(line)
        if req.get("op") == "quit":
            say({"bye": True})
            break
        say(await handle(radio, req))


asyncio.run(main())
