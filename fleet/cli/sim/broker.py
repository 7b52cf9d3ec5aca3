"""`fleet sim broker` — run the embedded pure-Python MQTT broker (amqtt) in the foreground."""
import asyncio

import click

from fleet.errors import FleetError


@click.command("broker")
@click.option("--port", default=1883, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one (printed).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def cli(port, host):
    """Run the embedded MQTT 3.1.1 broker until Ctrl-C.

    QoS 0/1, retained messages, last wills and persistent sessions, all in memory: stopping the
    broker forgets them. Prints the broker URL on stdout once it listens."""
    from fleet.sim.broker import BrokerError, serve

    def ready(bound_port):
        click.echo(f"mqtt://{host}:{bound_port}")
        click.echo("broker running; Ctrl-C stops it", err=True)

    try:
        asyncio.run(serve(host, port, ready))
    except BrokerError as e:
        raise FleetError(f"{e}. Use a local --host and a free --port (0 picks one); another "
                         "broker may already hold the port.") from e
    except KeyboardInterrupt:
        pass
    click.echo("broker stopped", err=True)
