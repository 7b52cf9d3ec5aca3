"""Run `fleet` through its real entry point (fleet.cli.main: the one place that turns an
unexpected exception into "unexpected ... this is a bug"), in-process, with stdout and stderr
captured apart. CliRunner.invoke(group) would skip main() and hide exactly those lines."""
from click.testing import CliRunner

from fleet.cli import main


class Ran:
    """What one run printed: code, stdout, stderr (text)."""

    def __init__(self, code, stdout, stderr):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def output(self):
        return self.stdout + self.stderr

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-2000:]}"


def run_fleet(argv, env=None, input=None):  # noqa: A002 - CliRunner's name
    """Run `fleet ARGV` via fleet.cli.main; return Ran. REDMESH_DEBUG is unset so a bug shows as
    the operator would see it."""
    env = dict(env or {})
    env.setdefault("REDMESH_DEBUG", None)
    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _):
        try:
            main(list(argv))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return Ran(code, out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace"))


def assert_clean(r, codes=(0, 1, 2)):
    """The exit-code contract: 0 ok, 1 failed / invalid / not found, 2 usage; no bug line, no
    traceback."""
    assert r.code in codes, r
    assert "this is a bug" not in r.output and "unexpected" not in r.stderr.lower(), r
    assert "Traceback (most recent call last)" not in r.output, r
