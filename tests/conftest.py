import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)


import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Mark a test whose call failed, for teardowns that print evidence (tests/board_trace.py)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.redmesh_call_failed = True


@pytest.fixture(autouse=True)
def guard_cli_output(monkeypatch):
    """Every CliRunner.invoke of every test is grepped for the key bytes of the fleet homes it
    names (tests/key_leak_guard.py): no secret byte in any message."""
    import key_leak_guard

    key_leak_guard.install(monkeypatch)


@pytest.fixture
def board(tmp_path, request):
    """A virtual board (fleet/sim/board/) on a fresh flash directory, stopped by PID after the
    test, pass or fail (its supervisor's trace printed on failure). Modules with their own
    `board` fixture (test_virtual_board) override it."""
    from board_trace import stop_boards

    from fleet.sim.board import VirtualBoard

    b = VirtualBoard(str(tmp_path / "flash"))
    b.start()
    try:
        yield b
    finally:
        stop_boards(request, [b])


from pg import pg_cluster, pg_url  # noqa: E402, F401 - PostgreSQL fixtures (tests/pg.py)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A URL naming a new store on each backend (PostgreSQL: a fresh schema of the worker's cluster)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/fleet.db"
    return request.getfixturevalue("pg_url")
