"""`fleet serve` — the read-only open-data HTTP service (fleet/web/app.py) on 127.0.0.1 by
default: the self-refreshing map at /, GeoJSON, readings, a summary, OpenAPI docs at /docs."""
import click

from fleet import aqi as aqimod
from fleet.cli._options import BoundedInt, home_option
from fleet.errors import FleetError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the service to the network).")
@click.option("--port", type=BoundedInt(1, 65535), default=8080, show_default=True, help="TCP port.")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None,
              help="Index: ica (Colombia) or epa (US AQI). Default: fleet.toml status.aqi.")
@home_option
def cli(home, host, port, aqi):
    """Serve the fleet map and its open data over HTTP (read-only)."""
    import uvicorn

    from fleet.web.app import create_app

    home = home.with_overrides({"status.aqi": aqi})
    cfg = home.config["status"]
    home.store().close()  # a missing or wiped store is an error now, not at the first request
    app = create_app(lambda: home.store(pooled=True), aqi=cfg["aqi"], stale_after_s=cfg["stale_after_s"],
                     offline_after_s=cfg["offline_after_s"])
    import socket

    try:  # a busy port or a foreign address is a one-line error, before uvicorn starts
        with socket.create_server((host, port)):
            pass
    except (OSError, OverflowError) as e:
        raise FleetError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    click.echo(f"serving the fleet map on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except OSError as e:
        raise FleetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
