"""`make bench`: run every benchmark, print one table of figures beside their budgets, and
write bench/results.json (plus each benchmark's full text output, and bench/out/*.png).

    .venv/bin/python -m bench.run [--quick] [--only NAME[,NAME]]

Figures are measurements on this machine (2 shared cores): ratios and sizes are stable,
times vary by tens of percent between runs. Nothing here is a pass/fail test.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "bench", "out")
PY = sys.executable


def _script(name, args, timeout_s=1800):
    """Run bench/<name>.py; return (seconds, its figures: stdout, plus the tail of stderr when it
    failed - libraries' warnings on stderr must not push the figures out)."""
    t0 = time.time()
    p = subprocess.run([PY, os.path.join(ROOT, "bench", name + ".py")] + args, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout_s)
    text = p.stdout[-12000:]
    if p.returncode != 0:
        text += "\n[exit %d] %s" % (p.returncode, p.stderr[-3000:])
    return round(time.time() - t0, 1), text


def bench_protocol(res, quick):
    from bench import protocol_bench

    res["protocol"] = protocol_bench.run()


def bench_status(res, quick):
    from bench import status_bench
    from fleet.home import FleetHome

    out = {}
    for n in ((5000,) if quick else (5000, 100000)):
        with tempfile.TemporaryDirectory(prefix="redmesh-bench-") as d:
            home = FleetHome(d)
            status_bench.fill(home, n, 5, int(time.time()))
            t_json, _ = status_bench.cli_time(home, ["--json"])
            t_table, _ = status_bench.cli_time(home, [])
            out[str(n)] = {"status_json_s": round(t_json, 3), "status_table_s": round(t_table, 3)}
    res["status"] = out
    # the same on a PostgreSQL store (a throwaway cluster, default durability; tests/pg.py)
    sys.path.insert(1, os.path.join(ROOT, "tests"))
    from pg import PgCluster, PgUnavailable

    try:
        cluster = PgCluster(durable=True).start()
    except (PgUnavailable, OSError) as e:
        print("  PostgreSQL unavailable (%s): no status figures on it" % e, flush=True)
        return
    out = {}
    try:
        for n in ((5000,) if quick else (5000, 100000)):
            with tempfile.TemporaryDirectory(prefix="redmesh-bench-") as d:
                home = FleetHome(d).with_overrides({"store.url": cluster.new_schema()[1]})
                status_bench.fill(home, n, 5, int(time.time()))
                t_json, _ = status_bench.cli_time(home, ["--json"])
                t_table, _ = status_bench.cli_time(home, [])
                out[str(n)] = {"status_json_s": round(t_json, 3), "status_table_s": round(t_table, 3)}
    finally:
        cluster.stop()
    res["status_postgresql"] = out


def bench_map(res, quick):
    from bench import map_bench

    with tempfile.TemporaryDirectory(prefix="redmesh-bench-") as d:
        res["map"] = {"map": [map_bench.map_figures(n, d) for n in ((5000,) if quick else (5000, 100000))],
                      "api_5000_nodes": map_bench.api_figures(d, reps=10 if quick else 40),
                      "pan_5000_nodes": map_bench.pan_bench(d, frames=120 if quick else 240)}


def bench_rig(res, quick):
    """The virtual rig, once per interpreter there is (the 32-bit build, then the 64-bit PyPI
    one): nodes' real memory and CPU, so how many virtual nodes this machine holds, frames per
    second through the medium at an offered load, firmware heap per role (lowest free heap the
    nodes reported, after a GC)."""
    from fleet.sim import interp

    runs = {}
    venv_mp = os.path.join(os.path.dirname(PY), "micropython")
    for label, path in (("32-bit", interp.MP32_PATH), ("64-bit", venv_mp)):
        if not os.access(path, os.X_OK):
            continue
        old = os.environ.get(interp.ENV_VAR)
        os.environ[interp.ENV_VAR] = path
        try:
            runs[label] = _rig_run(quick, path)
        finally:
            if old is None:
                os.environ.pop(interp.ENV_VAR, None)
            else:
                os.environ[interp.ENV_VAR] = old
    res["rig"] = runs


def _rig_run(quick, mp):
    from fleet.home import FleetHome
    from fleet.sim import interp
    from fleet.sim import topology as topo_mod
    from fleet.sim.handle import RigHandle
    from fleet.sim.rig import RigOptions
    from fleet.sim.verify import delivery_report

    n = 20 if quick else 30
    topo = topo_mod.generate("grid", n, 2, seed=7)
    with tempfile.TemporaryDirectory(prefix="redmesh-rig-") as d:
        home = FleetHome(os.path.join(d, "home"))
        opt = RigOptions(offered_interval_s=1, offered_for_s=40, seed=7)
        rig = RigHandle(home, topo, opt, log=lambda m: None)
        try:
            rig.start()
            time.sleep(10)
            s0 = rig.call_soon(rig.rig.medium.stats)
            t0 = time.time()
            time.sleep(30)
            s1 = rig.call_soon(rig.rig.medium.stats)
            dt = time.time() - t0
            rss, cpu = [], 0.0
            for np in rig.rig.nodes.values():
                if np.alive():
                    rss.append(_rss_kb(np.proc.pid))
                    cpu += _cpu_s(np.proc.pid)
            time.sleep(15)
            heaps = rig.query("SELECT n.role, min(s.heap_min), max(s.heap_free) FROM node_state s JOIN nodes n "
                              "USING (node) GROUP BY n.role")
            rep = delivery_report(home)
        finally:
            rig.stop()
    alive_s = dt + 40
    mem_total_kb = _meminfo_kb("MemTotal")
    per_node_kb = sum(rss) / max(1, len(rss))
    return {
        "interpreter": os.path.basename(mp), "nodes": n,
        "frames_per_s": round((s1["offered"] - s0["offered"]) / dt, 1),
        "delivered_per_s": round((s1["delivered"] - s0["delivered"]) / dt, 1),
        "node_rss_kb": round(per_node_kb), "node_cpu_pct": round(100.0 * cpu / alive_s / max(1, len(rss)), 2),
        "nodes_fit_in_memory": int(mem_total_kb * 0.8 / per_node_kb) if per_node_kb else None,
        "heap_min_free_by_role": {r: {"heap_min": hm, "heap_free_max": hf} for r, hm, hf in heaps},
        "heap_kb_by_role": {"node": interp.heap_kb(opt.heap, mp), "gateway": interp.heap_kb(opt.gateway_heap, mp)},
        "readings": rep["readings"], "holes": rep["holes"],
        "latency_p50_s": rep["latency_p50_s"], "latency_p99_s": rep["latency_p99_s"],
    }


def _rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _meminfo_kb(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def bench_scripts(res, quick):
    """The component benchmarks, kept as their own scripts; their text goes into results.json."""
    runs = {
        "ed25519": ("ed25519_bench", ["--runs", "10" if quick else "30"]),
        "mesh": ("mesh_bench", ["--side", "10", "--hours", "1"]),
        "collector": ("collector_bench", ["--envelopes", "200" if quick else "1000"]),
        # issue 11: one node's 30-day series out of a store of 10 million readings, both backends
        "series": ("series_bench", ["--readings", "1000000" if quick else "10000000"]),
        "mqtt": ("mqtt_bench", ["--n", "2000" if quick else "5000"]),
        "provision": ("provision_bench", ["--boards", "4"]),
        "heap": ("heap_bench", ["--imports", "--heaps", "123,96"] if quick else
                 ["--imports", "--heaps", "123,112,96,88", "--gateway-heaps", "1024,256,192,160"]),
        # issue 10: an OTA-slot node through a whole campaign (v2 confirmed, v3 rolled back)
        "ota_heap": ("ota_heap_bench", ["--heaps", "123" if quick else "123,116"]),
    }
    if os.path.exists(os.path.join(ROOT, "bench", "des_bench.py")):
        runs["des"] = ("des_bench", ["--quick"] if quick else [])
    if os.path.exists(os.path.join(ROOT, "bench", "ota_bench.py")):
        runs["ota"] = ("ota_bench", [])
    # issue 16's fault campaign: four faults, what was lost, what the operator saw, recovery time
    runs["faults"] = ("fault_campaign", ["--quick"] if quick else [])
    # issue 15: the mesh on a bad night, 2,000 and 5,000 nodes x loss x failure (hours in full)
    runs["loss_matrix"] = ("loss_matrix", ["--quick"] if quick else [], 1800 if quick else 6 * 3600)
    res["scripts"] = {}
    for key, spec in runs.items():
        name, args = spec[0], spec[1]
        try:
            secs, text = _script(name, args, spec[2] if len(spec) > 2 else 1800)
        except subprocess.TimeoutExpired:
            secs, text = None, "timed out"
        res["scripts"][key] = {"seconds": secs, "output": text}
        print("  %s: %s s" % (name, secs), flush=True)


def _first(pattern, text, cast=float):
    m = re.search(pattern, text or "")
    return cast(m.group(1)) if m else None


def table(res):
    """Rows of (figure, measured, budget)."""
    rows = []
    p = res.get("protocol")
    if p:
        by = {r["frame"]: r for r in p["frames"]}
        t1 = by["telemetry (1 reading)"]
        rows.append(("telemetry frame, 1 reading, both tags", "%d B (SenML-CBOR %d B, JSON %d B)"
                     % (t1["bytes"], t1["senml_cbor_bytes"], t1["json_bytes"]), "<= 48 B (aim 40)"))
        rows.append(("beacon frame", "%d B" % by["beacon"]["bytes"], "<= 32 B"))
        rows.append(("OTA data frame", "224 image B in %d B" % by["ota data (224 B)"]["bytes"], ">= 200 B in <= 250 B"))
        rows.append(("telemetry encode+tag / verify+decode, CPython", "%.1f / %.1f us" % (
            t1["cpython_encode_tag_us"], t1["cpython_verify_decode_us"]), "-"))
        mp = p["micropython"]
        rows.append(("same on MicroPython (unix port)", "%.1f / %.1f us" % (
            mp["telemetry_encode_tag_us"], mp["telemetry_verify_decode_us"]), "-"))
    for key, store in (("status", ""), ("status_postgresql", ", PostgreSQL store")):
        for n, v in (res.get(key) or {}).items():
            rows.append(("`fleet status` at %s nodes (process%s)" % (n, store), "%.2f s (json %.2f s)" % (
                v["status_table_s"], v["status_json_s"]), "< 0.5 s at 5,000" if n == "5000" else "-"))
    mp_ = res.get("map")
    if mp_:
        for m in mp_["map"]:
            rows.append(("`fleet map` at %d nodes: build / file" % m["nodes"], "%.2f s / %.2f MB" % (
                m["build_s"], m["size_mb"]), "<= 2 s / <= 3 MB at 5,000" if m["nodes"] == 5000 else "-"))
        api = mp_["api_5000_nodes"]
        for k, label in (("geojson", "GeoJSON of 5,000 poles"), ("series_30d_1h", "30-day hourly series")):
            rows.append(("fleet serve over HTTP: %s p50 / p99" % label, "%.0f / %.0f ms" % (
                api[k]["p50_ms"], api[k]["p99_ms"]), "-"))
        pan = mp_.get("pan_5000_nodes")
        if pan:
            rows.append(("map of 5,000 nodes panned in headless Chromium", "%.0f frames/s, p95 frame %.0f ms "
                         "(blank page %.0f/s, one full-window canvas filled per frame %s/s)" % (
                             pan["fps"], pan["frame_ms_p95"], pan["blank_page_fps"], pan.get("full_canvas_fps")),
                         "-"))
    for label, rg in (res.get("rig") or {}).items():
        rows.append(("virtual rig (%s): frames/s through the medium (%d nodes)" % (label, rg["nodes"]),
                     str(rg["frames_per_s"]), "-"))
        rows.append(("virtual node (%s): memory / CPU" % label,
                     "%d KB RSS, %.2f %% CPU" % (rg["node_rss_kb"], rg["node_cpu_pct"]), "-"))
        rows.append(("virtual nodes that fit this machine's memory (%s)" % label, str(rg["nodes_fit_in_memory"]), "-"))
        for role, h in rg["heap_min_free_by_role"].items():
            size = rg["heap_kb_by_role"].get(role)
            peak = ""
            if size and h["heap_min"] is not None:
                peak = ", peak live %d KB" % ((size * 1024 - h["heap_min"]) // 1024)
            rows.append(("firmware heap (%s), %s (heap %sk): lowest free after a GC" % (label, role, size),
                         "%s B%s" % (h["heap_min"], peak), ">= 16 KB, no MemoryError"))
    sc = res.get("scripts", {})
    ed = sc.get("ed25519", {}).get("output")
    if ed:
        mp = ed.split("MicroPython", 1)[-1]
        rows.append(("Ed25519 verify of a 2 KB manifest on MicroPython (unix port)",
                     "%s ms" % _first(r"verify, manifest[^\n]*?best\s+([\d.]+)\s*ms", mp), "measured"))
    col = sc.get("collector", {}).get("output")
    if col:
        rows.append(("collector ingest (in-process)", "%s frames/s" % _first(r"in-process\s+(\d+) frames/s", col, int),
                     "-"))
        pg = _first(r"in-process postgresql\s+(\d+) frames/s", col, int)
        if pg:
            rows.append(("collector ingest (in-process), PostgreSQL store, one writer",
                         "%d frames/s (%sx SQLite's)" % (pg, _first(r"postgresql / sqlite: ([\d.]+)x", col, str)),
                         ">= 20,000 frames/s"))
        for kind in ("amqtt", "mosquitto"):
            v = _first(kind + r"\s+\S+\s+(\d+) frames/s", col, int)
            if v:
                rows.append(("collector ingest through %s" % kind, "%d frames/s" % v, "-"))
            v = _first(kind + r"\+pg\s+\S+\s+(\d+) frames/s", col, int)
            if v:
                rows.append(("collector ingest through %s, PostgreSQL store" % kind, "%d frames/s" % v, "-"))
    hp = sc.get("heap", {}).get("output")
    if hp:
        from fleet.sim import interp

        for role, budget in (("node", "%d KB (board 112 + sim HAL)" % interp.NODE_HEAP_KB),
                             ("gateway", "%d KB (WROVER-E PSRAM, held)" % interp.GATEWAY_HEAP_KB)):
            kb = _first(r"smallest %s heap that ran with >= 16 KB free at the worst moment: (\w+) KB" % role, hp, str)
            if kb:
                rows.append(("smallest %s heap keeping 16 KB free at the worst moment (bench/heap_bench.py)" % role,
                             "%s KB" % kb, budget))
        m = re.search(r"plain node:.*?total\s+(\d+)", hp, re.S)
        if m:
            rows.append(("import cost of a plain node's modules (.mpy, 32-bit)", "%s B" % m.group(1), "-"))
    des = _load(os.path.join(OUT, "des.json"))
    if des:
        for r in des if isinstance(des, list) else des.get("runs", []):
            if r.get("nodes") == 5000:
                rows.append(("DES 5,000 nodes x 1 h (status reports on): wall time", "%s s" % r.get("wall_s"), "about 60 s"))
                rows.append(("DES 5,000: delivery first pass / after repair", "%s / %s" % (
                    r.get("delivery_first_pass"), r.get("delivery_after_repair")), "-"))
                rows.append(("DES 5,000: latency p50 / p99", "%s / %s s" % (r.get("latency_p50_s"), r.get("latency_p99_s")),
                             "-"))
    ota = _load(os.path.join(OUT, "ota.json"))
    if ota:
        rows.append(("OTA, 25-node rig: time to all confirmed", "%s s" % ota.get("grid25_update_s"), "measured"))
        rows.append(("OTA, 25-node rig: bytes on air per bundle byte", str(ota.get("air_bytes_per_bundle_byte")),
                     "measured"))
        rows.append(("OTA, 25-node rig: telemetry stored during the campaign",
                     "%s %%" % ota.get("telemetry_during_campaign_pct"), "keeps flowing"))
    return rows


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens of minutes)")
    ap.add_argument("--only", default="", help="comma-separated: protocol,status,rig,scripts")
    args = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    res = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name, fn in (("protocol", bench_protocol), ("status", bench_status), ("map", bench_map), ("rig", bench_rig),
                     ("scripts", bench_scripts)):
        if only and name not in only:
            continue
        print("== %s" % name, flush=True)
        t0 = time.time()
        try:
            fn(res, args.quick)
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not hide the others
            res.setdefault("errors", {})[name] = "%s: %s" % (type(e).__name__, e)
            print("  failed: %s" % res["errors"][name], flush=True)
        print("  %.0f s" % (time.time() - t0), flush=True)
    rows = table(res)
    res["table"] = [{"figure": a, "measured": b, "budget": c} for a, b, c in rows]
    with open(os.path.join(ROOT, "bench", "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    w = max(len(a) for a, _, _ in rows) if rows else 10
    print("\n%-*s  %-40s  %s" % (w, "figure", "measured", "budget"))
    for a, b, c in rows:
        print("%-*s  %-40s  %s" % (w, a, b, c))
    print("\nwritten: bench/results.json, bench/out/")
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
