"""`fleet sim board` — run one virtual board: MicroPython on a pseudo-terminal that behaves like an
ESP32 on a USB serial port (see fleet/sim/board/ for how, and for the Python API)."""
import click

from fleet.cli._lazy import FleetCommand
from fleet.sim.board import DEFAULT_HEAP, MAX_QUOTA_BYTES, BoardConfig, parse_heap, parse_mac, run_supervisor


@click.command("board", cls=FleetCommand)
@click.option("--flash", "flash_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Flash directory to keep (littlefs image, MAC, write counter); default: a temporary one, removed at exit.")
@click.option("--link", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Also make PATH a symlink to the port (removed at exit).")
@click.option("--heap", default=DEFAULT_HEAP, show_default=True, help="Python heap in board KB, e.g. 160k; 'node' (the default): a provisioned node's, 123k with the rig's romfs partitions (32-bit build), 224k with the app in files. Scaled x1.5 on a 64-bit interpreter (fleet/sim/interp.py).")
@click.option("--quota-kb", type=click.IntRange(32, MAX_QUOTA_BYTES // 1024), default=2048, show_default=True,
              help="Flash size in KB (multiple of 4); writes beyond it fail with ENOSPC.")
@click.option("--mac", default=None, metavar="HEX", help="machine.unique_id() as 12 hex digits; default: stored, else derived from the flash directory.")
@click.option("--cut-power-at-write", type=click.IntRange(min=1), default=None, metavar="N",
              help="Fault hook: the Nth flash write from start never happens and the board loses power "
                   "(back on when a host opens the port or on SIGHUP).")
@click.option("--micropython", default=None, metavar="PATH", help="MicroPython unix-port command (default: the venv's).")
@click.option("--stop-on-stdin-eof", is_flag=True, hidden=True)
def cli(flash_dir, link, heap, quota_kb, mac, cut_power_at_write, micropython, stop_on_stdin_eof):
    """Run a virtual board until SIGTERM/Ctrl-C.

    Prints the port path (e.g. /dev/pts/7) as the first line of stdout, then one JSON event per
    line (power_on, soft_reboot, power_cut, ...). Use it like a board: `mpremote connect PORT ...`.
    SIGHUP presses the reset button. In MicroPython, `machine.VIRTUAL_BOARD` is True.
    """
    parse_heap(heap)
    config = BoardConfig(
        flash_dir=flash_dir,
        link=link,
        heap=heap,
        quota_bytes=quota_kb * 1024,
        mac=parse_mac(mac) if mac else None,
        cut_power_at_write=cut_power_at_write,
        micropython=micropython,
        stop_on_stdin_eof=stop_on_stdin_eof,
    )
    run_supervisor(config)


if __name__ == "__main__":  # `python -m fleet.cli.sim.board` (VirtualBoard.start)
    cli(prog_name="fleet sim board")
