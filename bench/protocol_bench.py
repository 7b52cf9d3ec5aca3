"""Protocol figures: size per frame type beside SenML-CBOR (RFC 8428) and Sensor.Community-style
JSON of the same content, and encode+tag / verify+decode time per frame on CPython and on
MicroPython (the unix port, same code). Prints a table; returns the figures for bench/run.py."""
import json
import os
import subprocess
import sys
import time

import cbor2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import protocol as P  # noqa: E402

MESH = bytes(range(32))
NODE = bytes(range(32, 64))
T = 1795000000


def frames():
    r = P.Reading(0, 123, 187, 254, 64, 215, 30, 0)
    return {
        "beacon": P.Beacon(src=1234, bseq=17, cost=57, depth=3, time_s=T, flags=0),
        "telemetry (1 reading)": P.Telemetry(origin=1234, seq=5000, time_s=T, readings=[r], hops=3, cost=57),
        "telemetry (6 readings)": P.Telemetry(origin=1234, seq=5000, time_s=T, hops=3, cost=57,
                                              readings=[P.Reading(60 * i, 123, 187, 254, 64, 215, 30, 0) for i in range(6)]),
        "status": P.Status(origin=1234, seq=7, time_s=T, hops=2, cost=45, body=P.StatusBody(
            fw_seq=3, fw_version="1.2.0", uptime_s=86400, heap_free=51234, heap_min=40110, backlog=0, parent=1200,
            link_etx=12, path_cost=45, rssi=-71, boot_count=4)),
        "command (resend)": P.Command(target=1234, cseq=42, op=P.OP_RESEND, args=[4990, 4999]),
        "ota data (224 B)": P.OtaData(src=1200, bseq=12, page=5, pkt=15, data=bytes(224)),
    }


def senml(readings, node=1234):
    """The same readings as SenML-CBOR (RFC 8428 integer labels: -2 bn, -3 bt, 0 n, 1 u, 2 v, 6 t)."""
    recs = []
    for i, r in enumerate(readings):
        base = {-2: "urn:dev:redmesh:%d:" % node, -3: T} if i == 0 else {}
        t = {6: -r.dt_s} if r.dt_s else {}
        recs.append({**base, 0: "pm1", 1: "ug/m3", 2: r.pm1 / 10, **t})
        recs.append({0: "pm25", 1: "ug/m3", 2: r.pm25 / 10, **t})
        recs.append({0: "pm10", 1: "ug/m3", 2: r.pm10 / 10, **t})
        recs.append({0: "rh", 1: "%RH", 2: r.rh, **t})
        recs.append({0: "temp", 1: "Cel", 2: r.temp / 10, **t})
    return cbor2.dumps(recs)


def sc_json(readings, node=1234):
    """Sensor.Community (luftdaten) style JSON, one object per reading."""
    out = []
    for r in readings:
        out.append({"esp8266id": str(node), "software_version": "redmesh-1.0.0", "sensordatavalues": [
            {"value_type": "SDS_P1", "value": "%.1f" % (r.pm10 / 10)},
            {"value_type": "SDS_P2", "value": "%.1f" % (r.pm25 / 10)},
            {"value_type": "temperature", "value": "%.1f" % (r.temp / 10)},
            {"value_type": "humidity", "value": "%d" % r.rh}]})
    return json.dumps(out if len(out) > 1 else out[0], separators=(",", ":")).encode()


def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def cpython_times():
    from protocol.auth import Hmac

    mesh, node = Hmac(MESH), Hmac(NODE)
    out = {}
    for name, f in frames().items():
        key = node if f.type in (P.T_TELEMETRY, P.T_STATUS, P.T_REPLY, P.T_COMMAND) else None
        b = P.encode(f, mesh, key)
        enc = _time(lambda f=f, key=key: P.encode(f, mesh, key), 2000)
        dec = _time(lambda b=b, key=key: P.decode(b, mesh, key), 2000)
        out[name] = (len(b), enc, dec)
    return out


MP_SCRIPT = r"""
import sys, time
sys.path.insert(0, %r)
import protocol as P
from protocol.auth import Hmac
mesh = Hmac(bytes(range(32))); node = Hmac(bytes(range(32, 64)))
f = P.Telemetry(origin=1234, seq=5000, time_s=1795000000, readings=[P.Reading(0,123,187,254,64,215,30,0)], hops=3, cost=57)
b = P.encode(f, mesh, node)
N = 2000
t0 = time.ticks_us()
for _ in range(N): P.encode(f, mesh, node)
t1 = time.ticks_us()
for _ in range(N): P.decode(b, mesh, node)
t2 = time.ticks_us()
h = mesh
for _ in range(N): h.tag(b, 4)
t3 = time.ticks_us()
print(time.ticks_diff(t1, t0) / N, time.ticks_diff(t2, t1) / N, time.ticks_diff(t3, t2) / N)
"""


def micropython_times():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import tempfile

    import mpy_build

    with tempfile.TemporaryDirectory() as d:
        mpy_build.build(d)
        mp = os.path.join(os.path.dirname(sys.executable), "micropython")
        out = subprocess.run([mp, "-X", "heapsize=64k", "-c", MP_SCRIPT % d], capture_output=True, text=True, timeout=120)
    enc, dec, tag = (float(x) for x in out.stdout.split())
    return {"telemetry_encode_tag_us": round(enc, 1), "telemetry_verify_decode_us": round(dec, 1), "hop_tag_us": round(tag, 1)}


def run():
    cp = cpython_times()
    rows = []
    fr = frames()
    for name, (size, enc, dec) in cp.items():
        f = fr[name]
        s_senml = len(senml(f.readings)) if f.type == P.T_TELEMETRY else None
        s_json = len(sc_json(f.readings)) if f.type == P.T_TELEMETRY else None
        rows.append({"frame": name, "bytes": size, "senml_cbor_bytes": s_senml, "json_bytes": s_json,
                     "cpython_encode_tag_us": round(enc, 1), "cpython_verify_decode_us": round(dec, 1)})
    mp = micropython_times()
    return {"frames": rows, "micropython": mp}


def main():
    res = run()
    print("%-24s %6s %8s %6s %10s %10s" % ("frame", "bytes", "SenML", "JSON", "enc+tag us", "ver+dec us"))
    for r in res["frames"]:
        print("%-24s %6d %8s %6s %10.1f %10.1f" % (r["frame"], r["bytes"], r["senml_cbor_bytes"] or "-",
                                                   r["json_bytes"] or "-", r["cpython_encode_tag_us"],
                                                   r["cpython_verify_decode_us"]))
    print("MicroPython (unix port, 64k heap), telemetry: encode+tags %(telemetry_encode_tag_us)s us, "
          "verify+decode %(telemetry_verify_decode_us)s us, one hop tag %(hop_tag_us)s us" % res["micropython"])
    return res


if __name__ == "__main__":
    main()
