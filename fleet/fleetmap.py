"""The fleet map: one self-contained HTML file (no network, no CDN, no tiles) of every pole.

`map_data(store, now_s, ...)` returns plain data (the nodes with position, state, PM2.5 and
category, parent and hops); `render_html(data)` turns it into one HTML page with the data and a
small canvas script inline. The street context is the poles themselves and the mesh tree
between them (each node's link to its parent).

Drawing rules (also in the page's legend):
- a pole is a disc filled with the official colour of its PM2.5 category (fleet.aqi.LEVEL_HEX,
  the same six colours in the ICA and the EPA AQI); a gateway is a square with a thick black
  border; a node online but without a value for the chosen metric is light grey;
- a stale, offline or never-heard node is a hollow grey ring (its last value is not current);
- a thin line joins each node to its parent (links on/off).

Metrics: `latest` (the last reading, from the status view: one row per node), `1h` and `24h`
(the mean of the node's readings with time in [now - window, now), computed from the raw
readings through Store.iter_readings, one query per node: seconds at thousands of nodes). A node
with no reading in the window has no value and says so. Both indices are defined on 24-h means;
a category of the latest reading or a 1-h mean is indicative.

Nodes registered without lat/lon cannot be placed: they are counted in the legend ("not placed").
"""
import datetime as dt
import html
import json

from fleet import aqi as aqimod
from fleet.errors import FleetError
from fleet.status import fleet_status

METRICS = ("latest", "1h", "24h")
_WINDOW_S = {"1h": 3600, "24h": 86400}
STATES = ("online", "stale", "offline", "never")  # index = the state code in the page's data


def _means(store, node_ids, now_s, window_s):
    """node -> mean PM2.5 (0.1 ug/m3, int) over [now - window, now), for nodes with readings."""
    out = {}
    for n in node_ids:
        total = count = 0
        for r in store.iter_readings(n, since=now_s - window_s, until=now_s + 1):
            if r["pm25"] is not None:
                total += r["pm25"]
                count += 1
        if count:
            out[n] = total // count
    return out


def map_data(store, now_s, *, aqi="ica", metric="latest", stale_after_s=300, offline_after_s=1800,
             rh_correction="none"):
    """Return {'generated_at', 'aqi', 'metric', 'nodes': [...], 'unplaced': int, 'categories'}.

    Each node: [id, lat, lon, is_gateway (0/1), state code (STATES index), level (0 = no value),
    pm25 (ug/m3 or None), parent (or None), hops, pole, last_heard (unix s or None), firmware].
    Raises FleetError on a bad argument."""
    if aqi not in aqimod.SCHEMES:
        raise FleetError(f"unknown air-quality index {aqi!r}; expected one of {', '.join(aqimod.SCHEMES)}")
    if metric not in METRICS:
        raise FleetError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    status = fleet_status(store, now_s, stale_after_s=stale_after_s, offline_after_s=offline_after_s, aqi=aqi,
                          rh_correction=rh_correction)
    where = {r["node"]: (r["lat"], r["lon"]) for r in store.nodes()}
    means = _means(store, [v["node"] for v in status["nodes"]], now_s, _WINDOW_S[metric]) if metric != "latest" else None
    state_code = {s: i for i, s in enumerate(STATES)}
    nodes, unplaced, categories = [], 0, {}
    for v in status["nodes"]:
        lat, lon = where.get(v["node"], (None, None))
        if lat is None or lon is None:
            unplaced += 1
            continue
        if means is None:
            pm_dug = None if v["pm25"] is None else round(v["pm25"] * 10)
        else:
            pm_dug = means.get(v["node"])
        level = 0
        if pm_dug is not None:
            level = aqimod.index_pm25(aqi, pm_dug)[1]
            categories[level] = categories.get(level, 0) + 1
        nodes.append([
            v["node"], round(lat, 6), round(lon, 6), 1 if v["role"] == "gateway" else 0, state_code[v["state"]],
            level, None if pm_dug is None else pm_dug / 10, v["parent"], v["hops"], v["pole"], v["last_heard"],
            v["firmware"],
        ])
    return {"generated_at": now_s, "aqi": aqi, "metric": metric, "nodes": nodes, "unplaced": unplaced,
            "categories": categories}


def legend(aqi):
    """[(level, colour, name, range text)] for the index `aqi`."""
    tab, unit = aqimod.table(aqi)
    out = []
    for c_lo, c_hi, _i_lo, _i_hi, level, name in tab:
        if unit == 10:
            rng = f"{c_lo}-{c_hi} ug/m3"
        else:
            rng = f"{c_lo / 10:.1f}-{c_hi / 10:.1f} ug/m3"
        out.append((level, aqimod.LEVEL_HEX[level], name, rng))
    return out


_METRIC_TEXT = {"latest": "latest reading", "1h": "1-hour mean", "24h": "24-hour mean"}
_AQI_TEXT = {"ica": "ICA Colombia (Res. 2254/2017)", "epa": "US EPA AQI (2024)"}


def render_html(data, *, links=True, refresh_s=None, title="Red Mesh fleet map"):
    """Return the map page for `data` (map_data) as one self-contained HTML string.
    `refresh_s` adds a self-refresh (the served page); `links` draws the parent links."""
    made = dt.datetime.fromtimestamp(data["generated_at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    cfg = {
        "links": bool(links),
        "colours": {str(k): v for k, v in aqimod.LEVEL_HEX.items()},
        "names": {str(level): name for level, _c, name, _r in legend(data["aqi"])},
        "states": list(STATES),
        "now": data["generated_at"],
    }
    rows = "".join(
        f'<div class="lg"><span class="sw" style="background:{c}"></span>{html.escape(name)} '
        f'<small>{html.escape(rng)}</small> <b>{data["categories"].get(level, 0)}</b></div>'
        for level, c, name, rng in legend(data["aqi"]))
    n_placed = len(data["nodes"])
    unplaced = f'<div class="lg">not placed (no lat/lon): <b>{data["unplaced"]}</b></div>' if data["unplaced"] else ""
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    # The data travels as JSON inside a <script type="application/json">: "</" is escaped so a
    # pole name cannot close the tag.
    blob = json.dumps({"cfg": cfg, "nodes": data["nodes"]}, separators=(",", ":")).replace("</", "<\\/")
    return _PAGE.format(
        refresh=refresh, title=html.escape(title), made=made, metric=_METRIC_TEXT[data["metric"]],
        aqi=_AQI_TEXT[data["aqi"]], rows=rows, unplaced=unplaced, n=n_placed, blob=blob, script=_SCRIPT,
    )


def write_map(path, html_text):
    """Write the page atomically (a reader never sees half a file). Raises FleetError."""
    import os

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(html_text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise FleetError(f"cannot write the map to {path}: {e.strerror or e}") from e


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
html,body{{margin:0;height:100%;overflow:hidden;font:13px sans-serif;background:#f4f1ea}}
#map{{position:absolute;inset:0;display:block;cursor:grab}}
#panel{{position:absolute;top:8px;left:8px;background:rgba(255,255,255,.92);padding:6px 9px;
border:1px solid #999;border-radius:4px;max-width:300px}}
#panel h1{{font-size:14px;margin:0 0 4px}}
.lg{{white-space:nowrap;margin:1px 0}}
.sw{{display:inline-block;width:12px;height:12px;border:1px solid #333;border-radius:50%;
vertical-align:middle;margin-right:4px}}
.gw{{border-radius:0;border:2px solid #000;background:#fff}}
.ho{{background:none;border:2px solid #888}}
#tip{{position:absolute;display:none;background:#fff;border:1px solid #333;padding:4px 6px;
pointer-events:none;white-space:pre;font:12px monospace}}
</style></head><body>
<canvas id="map"></canvas>
<div id="panel"><h1>{title}</h1>
<div>PM2.5, {metric} &middot; {aqi}</div>
<div>made {made} &middot; <span id="count">{n}</span> poles</div>
{rows}
<div class="lg"><span class="sw" style="background:#c8c8c8"></span>no value for this metric</div>
<div class="lg"><span class="sw ho"></span>stale, offline or never heard</div>
<div class="lg"><span class="sw gw"></span>gateway</div>
{unplaced}
<div><small>drag to pan, wheel to zoom, hover or click a pole</small></div>
</div>
<div id="tip"></div>
<output id="probe" hidden></output>
<script id="data" type="application/json">{blob}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function(){
var D=JSON.parse(document.getElementById('data').textContent),C=D.cfg,N=D.nodes;
var cv=document.getElementById('map'),cx=cv.getContext('2d'),tip=document.getElementById('tip');
var byId={},i,n;for(i=0;i<N.length;i++)byId[N[i][0]]=N[i];
// equirectangular projection around the mean latitude, fitted to the window
var la0=1e9,la1=-1e9,lo0=1e9,lo1=-1e9;
for(i=0;i<N.length;i++){n=N[i];if(n[1]<la0)la0=n[1];if(n[1]>la1)la1=n[1];if(n[2]<lo0)lo0=n[2];if(n[2]>lo1)lo1=n[2];}
var k=Math.cos((la0+la1)/2*Math.PI/180)||1,W,H,s,ox,oy;
var X=new Float64Array(N.length),Y=new Float64Array(N.length);
// #size=WxH fixes the drawing size (headless tests: --dump-dom and --screenshot differ in viewport)
var fx=/size=(\d+)x(\d+)/.exec(location.hash);
function fit(){W=cv.width=fx?+fx[1]:window.innerWidth;H=cv.height=fx?+fx[2]:window.innerHeight;
 var w=Math.max((lo1-lo0)*k,1e-6),h=Math.max(la1-la0,1e-6),m=30;
 var pw=document.getElementById('panel').offsetWidth+16,l=W>2.5*pw?pw:0;  // keep the legend clear
 s=Math.min((W-l-2*m)/w,(H-2*m)/h);ox=l+(W-l)/2-s*((lo0+lo1)/2*k);oy=H/2+s*(la0+la1)/2;}
function proj(){for(var j=0;j<N.length;j++){X[j]=ox+s*N[j][2]*k;Y[j]=oy-s*N[j][1];}}
var idx={};for(i=0;i<N.length;i++)idx[N[i][0]]=i;
var R=5,pending=false;
function draw(){pending=false;proj();cx.clearRect(0,0,W,H);
 var j,p,drawn=0;
 if(C.links){cx.strokeStyle='rgba(60,60,60,.45)';cx.lineWidth=1;cx.beginPath();
  for(j=0;j<N.length;j++){p=idx[N[j][7]];if(p!==undefined){cx.moveTo(X[j],Y[j]);cx.lineTo(X[p],Y[p]);}}
  cx.stroke();}
 for(j=0;j<N.length;j++){n=N[j];var x=X[j],y=Y[j];
  if(x<-R||y<-R||x>W+R||y>H+R)continue;drawn++;
  var live=n[4]===0,col=live?(n[5]?C.colours[n[5]]:'#c8c8c8'):null;
  cx.beginPath();
  if(n[3]){cx.rect(x-R-1,y-R-1,2*R+2,2*R+2);}else{cx.arc(x,y,R,0,6.2832);}
  if(live){cx.fillStyle=col;cx.fill();}
  cx.lineWidth=n[3]?3:(live?1:2.5);cx.strokeStyle=live?'#000':'#888';cx.stroke();}
 document.getElementById('count').textContent=N.length+' ('+drawn+' in view)';
 if(location.hash.indexOf('probe')>=0){var pos={};for(j=0;j<N.length;j++)pos[N[j][0]]=[Math.round(X[j]),Math.round(Y[j])];
  var pr=document.getElementById('probe');pr.setAttribute('data-drawn',drawn);pr.textContent=JSON.stringify(pos);}}
function later(){if(!pending){pending=true;requestAnimationFrame(draw);}}
fit();draw();
window.addEventListener('resize',function(){fit();later();});
var drag=null;
cv.addEventListener('mousedown',function(e){drag=[e.clientX,e.clientY];cv.style.cursor='grabbing';});
window.addEventListener('mouseup',function(){drag=null;cv.style.cursor='grab';});
cv.addEventListener('wheel',function(e){e.preventDefault();var f=e.deltaY<0?1.25:0.8;
 ox=e.clientX-(e.clientX-ox)*f;oy=e.clientY-(e.clientY-oy)*f;s*=f;later();},{passive:false});
function fmt(t){if(t===null)return 'never';var a=C.now-t;
 return new Date(t*1000).toISOString().replace('T',' ').slice(0,19)+' UTC ('+(a<0?0:a)+' s before the map)';}
function near(mx,my){var b=-1,bd=(R+3)*(R+3);for(var j=0;j<N.length;j++){var dx=X[j]-mx,dy=Y[j]-my,d=dx*dx+dy*dy;
 if(d<=bd){bd=d;b=j;}}return b;}
function show(e){var j=near(e.clientX,e.clientY);if(j<0){tip.style.display='none';return;}n=N[j];
 tip.textContent=(n[3]?'gateway ':'node ')+n[0]+'\npole      '+(n[9]||'-')+'\nstate     '+C.states[n[4]]+
 '\nPM2.5     '+(n[6]===null?'-':n[6].toFixed(1)+' ug/m3')+'\ncategory  '+(n[5]?C.names[n[5]]:'-')+
 '\nhops      '+(n[8]===null?'-':n[8])+'\nparent    '+(n[7]===null?'-':n[7])+'\nlast heard '+fmt(n[10])+
 '\nfirmware  '+(n[11]||'-');
 tip.style.display='block';tip.style.left=Math.min(e.clientX+12,W-260)+'px';tip.style.top=Math.min(e.clientY+12,H-150)+'px';}
cv.addEventListener('mousemove',function(e){if(drag){ox+=e.clientX-drag[0];oy+=e.clientY-drag[1];
 drag=[e.clientX,e.clientY];later();return;}show(e);});
cv.addEventListener('click',show);
})();
"""
