"""The offline fleet map: one self-contained HTML file (inline JS drawing on a canvas; no
network, no CDN, no tiles — the street context is the poles themselves).

`map_data(store, now_s, ...)` returns the plain data the page draws (also served as JSON by
`fleet serve`); `render_html(data)` returns the page. Each node is a compact row (NODE_COLUMNS)
so 5,000 nodes stay well under 3 MB.

Drawing (the browser test relies on it): a side panel of PANEL_PX on the left, the canvas fills
the rest; poles are projected equirectangularly (longitude scaled by cos of the middle
latitude) to fit the canvas with PAD_PX on each side, centred. Nodes are discs of radius
RADIUS_PX filled with the category's official colour (fleet.aqi.LEVEL_HEX), gateways squares;
stale, offline and never-heard nodes are hollow grey rings; nodes online with no PM2.5 value are
light grey discs. Parent links are thin grey lines (toggle in the panel).
"""
import datetime as dt
import json

from fleet import aqi as aqimod
from fleet.errors import FleetError
from fleet.status import fleet_status

METRICS = {"latest": None, "1h": 3600, "24h": 86400}
NODE_COLUMNS = ("node", "pole", "lat", "lon", "pm25", "level", "state", "hops", "parent", "last_heard",
                "firmware", "gateway")
STATE_CODES = {"online": 0, "stale": 1, "offline": 2, "never": 3}
PANEL_PX = 240
PAD_PX = 30
RADIUS_PX = 6
HOLLOW = "#808080"
NO_VALUE = "#c8c8c8"


def map_data(store, now_s, metric="latest", aqi="ica", stale_after_s=300, offline_after_s=1800, links=True):
    """Return the map's data: {generated_at, metric, aqi, links, categories, states, columns,
    nodes: [[...NODE_COLUMNS]], unplaced (nodes with no position), summary}. Raises FleetError."""
    if metric not in METRICS:
        raise FleetError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    st = fleet_status(store, now_s, stale_after_s, offline_after_s, aqi=aqi)
    where = {n["node"]: (n["lat"], n["lon"]) for n in store.nodes()}
    window = METRICS[metric]
    means = store.pm25_means(now_s - window, now_s + 1) if window else None
    rows, unplaced, cache = [], 0, {}
    for v in st["nodes"]:
        lat, lon = where.get(v["node"], (None, None))
        if lat is None or lon is None:
            unplaced += 1
            continue
        if means is None:
            dug = None if v["pm25"] is None else round(v["pm25"] * 10)
        else:
            m = means.get(v["node"])
            dug = None if m is None else m[0]
        level = None
        if dug is not None:
            level = cache.get(dug)
            if level is None:
                level = cache[dug] = aqimod.index_pm25(aqi, dug)[1]
        rows.append([v["node"], v["pole"], round(lat, 6), round(lon, 6), None if dug is None else dug / 10, level,
                     STATE_CODES[v["state"]], v["hops"], v["parent"], v["last_heard"], v["firmware"],
                     1 if v["role"] == "gateway" else 0])
    return {
        "generated_at": now_s,
        "generated_iso": dt.datetime.fromtimestamp(now_s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "metric": metric,
        "aqi": aqi,
        "links": bool(links),
        "categories": [[lvl, name, lo, aqimod.LEVEL_HEX[lvl]] for lvl, name, lo in aqimod.categories(aqi)],
        "states": list(STATE_CODES),
        "columns": list(NODE_COLUMNS),
        "nodes": rows,
        "unplaced": unplaced,
        "summary": {k: st["summary"][k] for k in ("nodes", "online", "stale", "offline", "never_heard")},
    }


def render_html(data, refresh_url=None, refresh_s=60):
    """Return the self-contained map page for `data` (map_data). With `refresh_url` the page
    re-fetches its data from there every `refresh_s` seconds (the served map)."""
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    cfg = json.dumps({"refresh_url": refresh_url, "refresh_s": refresh_s, "panel": PANEL_PX, "pad": PAD_PX,
                      "radius": RADIUS_PX, "hollow": HOLLOW, "novalue": NO_VALUE})
    return (_PAGE.replace("__DATA__", blob).replace("__CFG__", cfg)
            .replace("__PANEL__", str(PANEL_PX)))


def write_map(path, html):
    """Write the page to `path`; raises FleetError with the reason on failure."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(html)
    except OSError as e:
        raise FleetError(f"cannot write the map to {path}: {e.strerror or e}") from None


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Red Mesh fleet map</title>
<style>
html,body{margin:0;height:100%;overflow:hidden;font:13px/1.35 system-ui,sans-serif;background:#f4f4f0;color:#222}
#panel{position:absolute;left:0;top:0;bottom:0;width:__PANEL__px;box-sizing:border-box;padding:10px;
 background:#fff;border-right:1px solid #ccc;overflow:auto}
#map{position:absolute;top:0;left:__PANEL__px;cursor:grab;display:block}
h1{font-size:15px;margin:0 0 4px}
.sw{display:inline-block;width:14px;height:14px;vertical-align:middle;margin-right:6px;border:1px solid #333}
.row{margin:2px 0}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #888;padding:4px 6px;display:none;
 white-space:pre;font:12px monospace;box-shadow:1px 1px 3px #0003}
#detail{white-space:pre;font:12px monospace;margin-top:8px}
</style></head><body>
<div id="panel"><h1>Red Mesh fleet</h1><div id="made"></div><div id="counts"></div>
<div id="legend"></div>
<label class="row"><input type="checkbox" id="links"> parent links</label>
<div class="row" style="color:#666">drag to pan, wheel to zoom, click a pole for details</div>
<div id="detail"></div></div>
<canvas id="map"></canvas><div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const CFG = __CFG__;
let D = JSON.parse(document.getElementById("data").textContent);
const cv = document.getElementById("map"), ctx = cv.getContext("2d");
const tip = document.getElementById("tip"), linksBox = document.getElementById("links");
let W = 0, H = 0, P = null, zoom = 1, tx = 0, ty = 0, byId = new Map(), colour = {}, names = {};
const STATE = ["online", "stale", "offline", "never heard"];
function esc(s){return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));}
function setup(){
  colour = {}; names = {};
  for (const c of D.categories){ colour[c[0]] = c[3]; names[c[0]] = c[1]; }
  byId = new Map(); D.nodes.forEach((n, i) => byId.set(n[0], i));
  let lo = [Infinity, Infinity], hi = [-Infinity, -Infinity];
  for (const n of D.nodes){ lo[0] = Math.min(lo[0], n[2]); hi[0] = Math.max(hi[0], n[2]);
    lo[1] = Math.min(lo[1], n[3]); hi[1] = Math.max(hi[1], n[3]); }
  P = {minlat: lo[0], maxlat: hi[0], minlon: lo[1], maxlon: hi[1]};
  P.kx = Math.cos((lo[0] + hi[0]) / 2 * Math.PI / 180);
  const made = document.getElementById("made");
  made.textContent = "made " + D.generated_iso + " - " + ({latest: "latest reading", "1h": "1-hour mean",
    "24h": "24-hour mean"}[D.metric]) + ", " + (D.aqi === "ica" ? "ICA (Colombia)" : "US EPA AQI");
  const s = D.summary;
  document.getElementById("counts").textContent = s.nodes + " nodes: " + s.online + " online, " + s.stale +
    " stale, " + s.offline + " offline, " + s.never_heard + " never heard" + (D.unplaced ? "; " + D.unplaced +
    " without a position (not drawn)" : "");
  let h = "<b>PM2.5 category</b>";
  for (const c of D.categories) h += '<div class="row"><span class="sw" style="background:' + c[3] + '"></span>' +
    esc(c[1]) + " (from " + c[2] + " \\u00b5g/m\\u00b3)</div>";
  h += '<div class="row"><span class="sw" style="background:' + CFG.novalue + '"></span>no reading</div>';
  h += '<div class="row"><span class="sw" style="background:#fff;border:2px solid ' + CFG.hollow +
    ';border-radius:8px;width:10px;height:10px"></span>stale / offline / never heard</div>';
  h += '<div class="row"><span class="sw" style="background:#fff;border:2px solid #000"></span>gateway (square)</div>';
  h += '<div class="row"><span class="sw" style="background:#fff;border-radius:8px"></span>node (disc)</div>';
  document.getElementById("legend").innerHTML = h;
}
function resize(){
  W = Math.max(100, window.innerWidth - CFG.panel); H = Math.max(100, window.innerHeight);
  cv.width = W; cv.height = H; draw();
}
function base(n){
  const pad = CFG.pad, aw = W - 2 * pad, ah = H - 2 * pad;
  const dx = (P.maxlon - P.minlon) * P.kx, dy = P.maxlat - P.minlat;
  let s = Math.min(dx > 0 ? aw / dx : Infinity, dy > 0 ? ah / dy : Infinity);
  if (!isFinite(s)) s = 1;
  const ox = pad + (aw - dx * s) / 2, oy = pad + (ah - dy * s) / 2;
  return [ox + (n[3] - P.minlon) * P.kx * s, oy + (P.maxlat - n[2]) * s];
}
function xy(n){ const b = base(n); return [b[0] * zoom + tx, b[1] * zoom + ty]; }
const sprites = new Map();
function sprite(c){  // the marker of fill colour c (null: hollow, a stale or offline node)
  let s = sprites.get(c);
  if (s) return s;
  const r = CFG.radius, size = 2 * r + 4;
  s = document.createElement("canvas"); s.width = s.height = size;
  const g = s.getContext("2d"); g.beginPath(); g.arc(size / 2, size / 2, r, 0, 2 * Math.PI);
  if (c === null){ g.lineWidth = 2; g.strokeStyle = CFG.hollow; g.stroke(); }
  else { g.fillStyle = c; g.fill(); g.lineWidth = 1; g.strokeStyle = "#333"; g.stroke(); }
  sprites.set(c, s);
  return s;
}
// The markers and links are drawn once per zoom level into a layer canvas, and a pan only
// copies that layer at its new offset: one blit a frame instead of 5,000 markers (software
// canvas: 30 frames/s drawing them all, bench/map_bench.py). A layer larger than LAYER_MAX
// pixels (deep zoom) is not made: then few markers are on screen and they are drawn directly.
const LAYER_MAX = 4096 * 4096;
let layer = null, layerKey = "", layerAt = [0, 0];
function paint(g, pts, ox, oy, W2, H2){  // links and markers into context g, shifted by ox, oy
  const r = CFG.radius, gws = []; let count = 0;
  if (linksBox.checked){
    g.strokeStyle = "rgba(110,110,110,0.55)"; g.lineWidth = 1; g.beginPath();
    D.nodes.forEach((n, i) => { const j = byId.get(n[8]); if (j === undefined || j === i) return;
      g.moveTo(pts[i][0] + ox, pts[i][1] + oy); g.lineTo(pts[j][0] + ox, pts[j][1] + oy); });
    g.stroke();
  }
  D.nodes.forEach((n, i) => {
    const x = pts[i][0] + ox, y = pts[i][1] + oy;
    if (x < -r || y < -r || x > W2 + r || y > H2 + r) return;
    count++;
    if (n[11] === 1){ gws.push(i); return; }
    const s = sprite(n[6] !== 0 ? null : (n[5] == null ? CFG.novalue : colour[n[5]]));
    g.drawImage(s, Math.round(x) - s.width / 2, Math.round(y) - s.height / 2);
  });
  gws.forEach(i => {  // a few: drawn on top, one by one
    const n = D.nodes[i], x = pts[i][0] + ox, y = pts[i][1] + oy;
    g.beginPath(); g.rect(x - r - 1, y - r - 1, 2 * r + 2, 2 * r + 2);
    if (n[6] === 0){ g.fillStyle = n[5] == null ? CFG.novalue : colour[n[5]]; g.fill();
      g.lineWidth = 2; g.strokeStyle = "#000"; g.stroke(); }
    else { g.lineWidth = 2; g.strokeStyle = CFG.hollow; g.stroke(); }
  });
  return count;
}
function draw(){
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#f4f4f0"; ctx.fillRect(0, 0, W, H);
  if (!D.nodes.length){ cv.dataset.markers = "0"; return; }
  const r = CFG.radius, m = r + 4;
  const key = [zoom, W, H, linksBox.checked].join("|");
  if (key !== layerKey){
    layerKey = key; layer = null;
    const pts = D.nodes.map(n => { const b = base(n); return [b[0] * zoom, b[1] * zoom]; });
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const p of pts){ x0 = Math.min(x0, p[0]); y0 = Math.min(y0, p[1]); x1 = Math.max(x1, p[0]); y1 = Math.max(y1, p[1]); }
    const lw = Math.ceil(x1 - x0) + 2 * m, lh = Math.ceil(y1 - y0) + 2 * m;
    if (lw * lh <= LAYER_MAX){
      layer = document.createElement("canvas"); layer.width = lw; layer.height = lh;
      paint(layer.getContext("2d"), pts, m - x0, m - y0, lw, lh);
      layerAt = [x0 - m, y0 - m];
    }
  }
  let count = 0;
  if (layer){
    ctx.drawImage(layer, Math.round(layerAt[0] + tx), Math.round(layerAt[1] + ty));
    D.nodes.forEach(n => { const p = xy(n); if (p[0] >= -r && p[1] >= -r && p[0] <= W + r && p[1] <= H + r) count++; });
  } else {
    count = paint(ctx, D.nodes.map(xy), 0, 0, W, H);
  }
  cv.dataset.markers = String(count);
}
let drawPending = false;
function redraw(){ if (drawPending) return; drawPending = true;
  requestAnimationFrame(() => { drawPending = false; draw(); }); }
function describe(n){
  const cat = n[5] == null ? "-" : names[n[5]];
  const heard = n[9] == null ? "never" : new Date(n[9] * 1000).toISOString().replace(".000", "");
  return (n[11] ? "gateway " : "node ") + n[0] + "\\npole      " + (n[1] ?? "-") + "\\nPM2.5     " +
    (n[4] == null ? "-" : n[4].toFixed(1) + " \\u00b5g/m\\u00b3") + "\\ncategory  " + cat + "\\nstate     " + STATE[n[6]] +
    "\\nhops      " + (n[7] ?? "-") + "\\nparent    " + (n[8] ?? "-") + "\\nlast heard " + heard +
    "\\nfirmware  " + (n[10] ?? "-");
}
function nearest(mx, my){
  let best = -1, bd = (CFG.radius + 4) ** 2;
  D.nodes.forEach((n, i) => { const [x, y] = xy(n); const d = (x - mx) ** 2 + (y - my) ** 2; if (d < bd){ bd = d; best = i; } });
  return best;
}
let drag = null;
cv.addEventListener("mousedown", e => { drag = [e.clientX, e.clientY, tx, ty, false]; cv.style.cursor = "grabbing"; });
window.addEventListener("mouseup", e => {
  if (drag && !drag[4]){ const i = nearest(e.clientX - CFG.panel, e.clientY);
    document.getElementById("detail").textContent = i < 0 ? "" : describe(D.nodes[i]); }
  drag = null; cv.style.cursor = "grab"; });
window.addEventListener("mousemove", e => {
  if (drag){ const dx = e.clientX - drag[0], dy = e.clientY - drag[1];
    if (Math.abs(dx) + Math.abs(dy) > 3) drag[4] = true;
    tx = drag[2] + dx; ty = drag[3] + dy; redraw(); tip.style.display = "none"; return; }
  const i = nearest(e.clientX - CFG.panel, e.clientY);
  if (i < 0){ tip.style.display = "none"; return; }
  tip.textContent = describe(D.nodes[i]); tip.style.display = "block";
  tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px";
});
cv.addEventListener("wheel", e => { e.preventDefault();
  const f = e.deltaY < 0 ? 1.25 : 0.8, mx = e.offsetX, my = e.offsetY;
  zoom *= f; tx = mx - (mx - tx) * f; ty = my - (my - ty) * f; redraw(); }, {passive: false});
linksBox.checked = D.links; linksBox.addEventListener("change", draw);  // the layer key holds the links flag
window.addEventListener("resize", resize);
setup(); resize();
if (CFG.refresh_url) setInterval(() => fetch(CFG.refresh_url).then(r => r.ok ? r.json() : null)
  .then(d => { if (d){ D = d; D.links = linksBox.checked; setup(); layerKey = ""; draw(); } }).catch(() => {}), CFG.refresh_s * 1000);
</script></body></html>
"""
