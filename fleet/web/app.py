"""`fleet serve`: the read-only open-data service (FastAPI). Routes (GET only):

    /                         the fleet map, re-fetching /api/map.json every minute
    /api/map.json             the map's data (fleet.web.map.map_data)
    /api/poles.geojson        every positioned pole: latest, 1 h and 24 h PM2.5 and categories
    /api/nodes/{id}/readings  a node's readings: raw or 1h/1d means, JSON or CSV, paginated
    /api/summary              fleet totals and category counts
    /docs, /openapi.json      the OpenAPI description

Each request opens the store for its own thread and closes it (SQLite connections belong to
one thread; WAL lets the collector write meanwhile). Bad parameters: 400 (or 422 from
validation) with a message; an unknown node: 404. Nothing served names a MAC, key or address.
"""
import csv
import io
import time

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from fleet.errors import FleetError
from fleet.status import fleet_status
from fleet.web import map as mapmod
from fleet.web import opendata

MAX_LIMIT = 10000
DEFAULT_SPAN_S = 86400


def create_app(open_store, aqi="ica", stale_after_s=300, offline_after_s=1800, refresh_s=60, clock=time.time):
    """Return the FastAPI app; `open_store()` returns a fresh Store for one request."""
    app = FastAPI(title="Red Mesh open air-quality data", version="1",
                  description="Read-only PM2.5 data of the Red Mesh street-light sensors: poles, readings, means.")

    def with_store(fn):
        store = open_store()
        try:
            return fn(store)
        except FleetError as e:
            raise HTTPException(400, str(e)) from None
        finally:
            store.close()

    @app.get("/", response_class=HTMLResponse, summary="The fleet map (refreshes itself)")
    def index():
        data = with_store(lambda s: mapmod.map_data(s, int(clock()), aqi=aqi, stale_after_s=stale_after_s,
                                                    offline_after_s=offline_after_s))
        return HTMLResponse(mapmod.render_html(data, refresh_url="/api/map.json", refresh_s=refresh_s))

    @app.get("/api/map.json", summary="The map's data")
    def map_json(metric: str = Query("latest", pattern="^(latest|1h|24h)$")):
        return with_store(lambda s: mapmod.map_data(s, int(clock()), metric=metric, aqi=aqi,
                                                    stale_after_s=stale_after_s, offline_after_s=offline_after_s))

    @app.get("/api/poles.geojson", summary="Every pole with its latest and mean PM2.5 and categories")
    def poles():
        body = with_store(lambda s: opendata.poles_geojson(s, int(clock()), aqi=aqi, stale_after_s=stale_after_s,
                                                           offline_after_s=offline_after_s))
        return JSONResponse(body, media_type="application/geo+json")

    @app.get("/api/summary", summary="Fleet totals and category counts")
    def summary():
        return with_store(lambda s: fleet_status(s, int(clock()), stale_after_s, offline_after_s, aqi=aqi,
                                                 limit=0)["summary"])

    @app.get("/api/nodes/{node}/readings", summary="A node's readings: raw or hourly/daily means")
    def readings(node: int,
                 since: str | None = Query(None, description="unix seconds, ISO 8601 or -2d (default: until - 24 h)"),
                 until: str | None = Query(None, description="same forms (default: now)"),
                 every: str = Query("raw", pattern="^(raw|1h|1d)$"),
                 format: str = Query("json", pattern="^(json|csv)$"),  # noqa: A002 - the public name
                 page: int = Query(1, ge=1, le=1_000_000),
                 limit: int = Query(1000, ge=1, le=MAX_LIMIT)):
        from fleet.timeparse import parse_time

        if not 0 <= node <= 0xFFFFFFFF:
            raise HTTPException(400, f"node must be 0..{0xFFFFFFFF}")
        now = int(clock())
        try:
            t1 = parse_time(until, now) if until is not None else now + 1
            t0 = parse_time(since, now) if since is not None else t1 - DEFAULT_SPAN_S
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        if t0 >= t1:
            raise HTTPException(400, "since must be before until")

        def run(s):
            if s.node(node) is None and s.node_state(node) is None:
                raise HTTPException(404, f"node {node} is unknown")
            return opendata.node_rows(s, node, t0, t1, every, (page - 1) * limit, limit)

        cols, rows = with_store(run)
        if format == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(cols)
            w.writerows(rows)
            return Response(buf.getvalue(), media_type="text/csv")
        return {"node": node, "since": t0, "until": t1, "every": every, "page": page, "limit": limit,
                "next_page": page + 1 if len(rows) == limit else None,
                "columns": list(cols), "rows": [list(r) for r in rows]}

    return app
