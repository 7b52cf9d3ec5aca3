# A tiny gateway-like app for tests and bench: runs firmware/mqtt.py under MicroPython (or
# CPython) and publishes numbered messages. Not a test module itself (no test_ prefix).
#
#   micropython -X heapsize=160k tests/mp_mqtt_publisher.py port=1883 n=100 [key=value ...]
#
# Keys: host port id n qos topic dir ram rambytes flash will ka inflight size maxq sub flush hold
# stat_ms.
# Message i has topic "<topic>/<i % 4>" (several topics, one order) and payload b"<i>:" padded
# with "x" to `size` bytes. Lines on stdout: "START", "FLUSHED <queued>", "MSG <topic> <payload>",
# "DONE <json stats>", "STAT <json stats>".
import json
import sys

_root = sys.argv[0].rsplit("/tests/", 1)[0] if "/tests/" in sys.argv[0] else "."
sys.path.insert(0, _root)

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

from firmware.compat import ticks_diff, ticks_ms  # noqa: E402
from firmware.mqtt import MQTTClient  # noqa: E402
from firmware.outbox import Outbox  # noqa: E402

if hasattr(asyncio, "sleep_ms"):
    _sleep_ms = asyncio.sleep_ms
else:
    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)

ARGS = {"host": "127.0.0.1", "port": "1883", "id": "mp-gw", "n": "10", "qos": "1",
        "topic": "rm/test", "dir": "", "ram": "16", "rambytes": "8192", "flash": "1048576", "will": "", "ka": "30",
        "inflight": "8", "size": "0", "maxq": "0", "sub": "", "flush": "0", "hold": "0",
        "stat_ms": "0"}
for a in sys.argv[1:]:
    k, v = a.split("=", 1)
    if k not in ARGS:
        raise SystemExit("unknown argument " + k)
    ARGS[k] = v


def payload_of(i, size):
    p = b"%d:" % i
    if len(p) < size:
        p += b"x" * (size - len(p))
    return p


def on_message(topic, payload):
    print("MSG", topic, payload.decode())


async def main():
    n = int(ARGS["n"])
    qos = int(ARGS["qos"])
    size = int(ARGS["size"])
    maxq = int(ARGS["maxq"])
    ob = Outbox(ARGS["dir"] or None, ram_max_msgs=int(ARGS["ram"]), ram_max_bytes=int(ARGS["rambytes"]),
                flash_max_bytes=int(ARGS["flash"]))
    queued_at_start = len(ob)
    c = MQTTClient(ARGS["id"], ARGS["host"], int(ARGS["port"]), keepalive_s=int(ARGS["ka"]),
                   will_topic=ARGS["will"] or None, outbox=ob, on_message=on_message,
                   max_inflight=int(ARGS["inflight"]), backoff_min_ms=200, backoff_max_ms=2000)
    if ARGS["sub"]:
        c.subscribe(ARGS["sub"], 1)
    print("START queued=%d" % queued_at_start)
    if int(ARGS["flush"]):
        # Offline mode: queue everything, write it to flash, report, wait to be killed.
        for i in range(n):
            await c.publish("%s/%d" % (ARGS["topic"], i % 4), payload_of(i, size), qos)
        ob.flush()
        print("FLUSHED %d" % len(ob))
        while True:
            await _sleep_ms(1000)
    task = asyncio.create_task(c.run())
    stat_ms = int(ARGS["stat_ms"])
    t_stat = t0 = ticks_ms()
    for i in range(n):
        while maxq and len(ob) >= maxq:  # producer back-pressure, so a RAM-only outbox never drops
            await _sleep_ms(2)
        await c.publish("%s/%d" % (ARGS["topic"], i % 4), payload_of(i, size), qos)
        if stat_ms and ticks_diff(ticks_ms(), t_stat) >= stat_ms:
            t_stat = ticks_ms()
            print("STAT " + json.dumps(c.stats()))
        if i % 8 == 7:
            await _sleep_ms(0)
    want = queued_at_start + n
    while len(ob) or (qos and c.acked + ob.dropped < want):
        await _sleep_ms(2)
        if stat_ms and ticks_diff(ticks_ms(), t_stat) >= stat_ms:
            t_stat = ticks_ms()
            print("STAT " + json.dumps(c.stats()))
    s = c.stats()
    s["elapsed_ms"] = ticks_diff(ticks_ms(), t0)
    print("DONE " + json.dumps(s))
    if int(ARGS["hold"]):
        while True:
            await _sleep_ms(stat_ms or 1000)
            if stat_ms:
                print("STAT " + json.dumps(c.stats()))
    await c.disconnect()
    await task


asyncio.run(main())
