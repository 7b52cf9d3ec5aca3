"""Map and open-data figures (issue 12): `fleet map` build time and file size at 5,000 and
100,000 nodes (fleet.web.synthetic fleets in a temporary SQLite store), and the API's p50/p99
for the GeoJSON and a 30-day hourly series at 5,000 nodes, over real HTTP (httpx, one kept-alive
connection) against a real `fleet serve` process (uvicorn) on 127.0.0.1; and the 5,000-node map
panned in headless Chromium (DevTools protocol: a JS loop drags the map one step per animation
frame; the frame intervals of requestAnimationFrame give frames/s and the p95 frame time, and
draw() is timed alone). Software rendering (--disable-gpu, as CI runs it).
Run: .venv/bin/python bench/map_bench.py [--quick]"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet.store import SQLiteStore  # noqa: E402
from fleet.web import synthetic  # noqa: E402
from fleet.web.map import map_data, render_html  # noqa: E402


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def map_figures(n, tmp):
    store = SQLiteStore(os.path.join(tmp, f"s{n}.db"))
    now = int(time.time())
    synthetic.build(store, n, now, readings_per_node=1)
    t = time.perf_counter()
    html = render_html(map_data(store, now))
    build_s = time.perf_counter() - t
    store.close()
    return {"nodes": n, "build_s": round(build_s, 3), "size_mb": round(len(html.encode()) / 1e6, 2)}


def _serve(home_dir, timeout_s=60):
    """Start `fleet serve` on a free port; return (Popen, base URL) once it answers."""
    import socket
    import subprocess

    import httpx

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-c", "from fleet.cli import main; main()", "serve", "--home", home_dir,
                          "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if p.poll() is not None:
            raise RuntimeError("fleet serve exited")
        try:
            httpx.get(base + "/api/summary", timeout=2)
            return p, base
        except httpx.TransportError:
            if time.monotonic() > deadline:
                _stop(p)
                raise RuntimeError("fleet serve did not answer") from None
            time.sleep(0.1)


def _stop(p):
    import signal
    import subprocess

    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    except ProcessLookupError:
        pass


def api_figures(tmp, reps=40):
    import httpx

    from fleet.home import FleetHome

    home_dir = os.path.join(tmp, "api-home")
    store = FleetHome.resolve(home_dir).store(create=True)
    now = int(time.time())
    synthetic.build(store, 5000, now, readings_per_node=1)
    # 30 days at one reading per 10 minutes for the series node
    store.add_readings([(1001, 10 + i, now - 30 * 86400 + i * 600, None, 10, 100 + i % 90, 150, 60, 250, 10, 0,
                         1, 1000, -60) for i in range(30 * 144)])
    store.close()
    p, base = _serve(home_dir)
    out = {"how": "real HTTP to a fleet serve (uvicorn) process, httpx keep-alive, sequential"}
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            for name, url in (("geojson", "/api/poles.geojson"),
                              ("series_30d_1h", f"/api/nodes/1001/readings?since={now - 30 * 86400}&until={now}"
                                                f"&every=1h")):
                r = c.get(url)  # warm-up
                assert r.status_code == 200, r.text
                ts = []
                for _ in range(reps):
                    t = time.perf_counter()
                    r = c.get(url)
                    ts.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                out[name] = {"p50_ms": round(1000 * _pct(ts, 50), 1), "p99_ms": round(1000 * _pct(ts, 99), 1),
                             "bytes": len(r.content), "n": reps}
    finally:
        _stop(p)
    return out


PAN_JS = """
(async () => {
  const cv = document.getElementById("map");
  const t0 = performance.now();
  while (!cv.dataset.markers && performance.now() - t0 < 20000) await new Promise(r => setTimeout(r, 50));
  const before = +cv.dataset.markers, draws = [];
  for (let i = 0; i < 10; i++){ const a = performance.now(); draw(); draws.push(performance.now() - a); }
  const r = cv.getBoundingClientRect(), x0 = r.left + r.width / 2, y0 = r.top + r.height / 2;
  cv.dispatchEvent(new MouseEvent("mousedown", {clientX: x0, clientY: y0, bubbles: true}));
  const stamps = [];
  await new Promise(done => {
    let i = 0;
    function step(ts){
      stamps.push(ts);
      if (i >= FRAMES){ done(); return; }
      i++;
      const a = i * 0.05;
      window.dispatchEvent(new MouseEvent("mousemove", {clientX: x0 + 200 * Math.sin(a), clientY: y0 + 120 * Math.sin(2 * a),
                                                        bubbles: true}));
      requestAnimationFrame(step);
    }
    requestAnimationFrame(step);
  });
  window.dispatchEvent(new MouseEvent("mouseup", {clientX: x0, clientY: y0, bubbles: true}));
  const gaps = stamps.slice(1).map((t, k) => t - stamps[k]);
  return {markers: before, gaps, draws, span: stamps[stamps.length - 1] - stamps[0]};
})()
"""


BLANK_JS = """
(async () => { document.body.innerHTML = ""; const s = [];
  await new Promise(done => { function f(ts){ s.push(ts); if (s.length > FRAMES) done(); else requestAnimationFrame(f); }
                              requestAnimationFrame(f); });
  return s[s.length - 1] - s[0]; })()
"""


# A full-window canvas cleared and filled every frame: what painting one canvas of the map's size
# costs this browser (software rendering here), so the map's rate can be read against it.
CANVAS_JS = """
(async () => { document.body.innerHTML = ""; const cv = document.createElement("canvas");
  cv.width = innerWidth; cv.height = innerHeight; document.body.appendChild(cv); const g = cv.getContext("2d");
  const s = [];
  await new Promise(done => { function f(ts){ s.push(ts); g.fillStyle = s.length % 2 ? "#eee" : "#ddd";
      g.fillRect(0, 0, cv.width, cv.height); if (s.length > FRAMES) done(); else requestAnimationFrame(f); }
    requestAnimationFrame(f); });
  return s[s.length - 1] - s[0]; })()
"""


def pan_figures(html_path, frames=240, size=(1280, 800), timeout_s=120):
    """Pan the map file in headless Chromium; None when chromium is missing."""
    import shutil
    import signal
    import subprocess

    import httpx
    from websockets.sync.client import connect

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    prof = tempfile.mkdtemp(prefix="pan-profile-")
    p = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                          "--disable-extensions", "--force-device-scale-factor=1", f"--window-size={size[0]},{size[1]}",
                          f"--user-data-dir={prof}", "--remote-debugging-port=0", "about:blank"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        port_file = os.path.join(prof, "DevToolsActivePort")
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError("chromium's DevTools port never appeared")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            ids = iter(range(1, 1000))

            def call(method, **params):
                i = next(ids)
                ws.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    m = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
                    if m.get("id") == i:
                        if "error" in m:
                            raise RuntimeError(f"{method}: {m['error']}")
                        return m["result"]

            call("Page.enable")
            t = time.perf_counter()
            call("Page.navigate", url="file://" + os.path.abspath(html_path))
            while call("Runtime.evaluate", expression="document.readyState",
                       returnByValue=True)["result"].get("value") != "complete":
                if time.monotonic() > deadline:
                    raise RuntimeError("the map page never loaded")
                time.sleep(0.05)
            load_s = time.perf_counter() - t
            res = call("Runtime.evaluate", expression=PAN_JS.replace("FRAMES", str(frames)), awaitPromise=True,
                       returnByValue=True)["result"]["value"]
            # the same browser's animation-frame rate with nothing to draw: the ceiling here
            blank = call("Runtime.evaluate", expression=BLANK_JS.replace("FRAMES", str(frames)), awaitPromise=True,
                         returnByValue=True)["result"]["value"]
            canvas = call("Runtime.evaluate", expression=CANVAS_JS.replace("FRAMES", str(frames)), awaitPromise=True,
                          returnByValue=True)["result"]["value"]
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)
        shutil.rmtree(prof, ignore_errors=True)
    gaps = res["gaps"]
    return {"markers": res["markers"], "frames": len(gaps), "window": list(size), "load_s": round(load_s, 2),
            "fps": round(1000 * len(gaps) / res["span"], 1) if res["span"] else None,
            "frame_ms_p50": round(_pct(gaps, 50), 1), "frame_ms_p95": round(_pct(gaps, 95), 1),
            "frame_ms_max": round(max(gaps), 1), "draw_ms_p50": round(_pct(res["draws"], 50), 1),
            "blank_page_fps": round(1000 * frames / blank, 1) if blank else None,
            "full_canvas_fps": round(1000 * frames / canvas, 1) if canvas else None,
            "how": "headless chromium, software canvas, a drag step per requestAnimationFrame"}


def pan_bench(tmp, n=5000, frames=240):
    store = SQLiteStore(os.path.join(tmp, f"pan{n}.db"))
    now = int(time.time())
    synthetic.build(store, n, now, readings_per_node=1)
    path = os.path.join(tmp, f"map{n}.html")
    with open(path, "w") as f:
        f.write(render_html(map_data(store, now)))
    store.close()
    return pan_figures(path, frames=frames)


def main():
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        res = {"map": [map_figures(n, tmp) for n in ((5000,) if quick else (5000, 100000))],
               "api_5000_nodes": api_figures(tmp, reps=10 if quick else 40),
               "pan_5000_nodes": pan_bench(tmp, frames=120 if quick else 240)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
