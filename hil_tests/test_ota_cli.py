"""Issue 6 as an operator runs it, with real processes: `fleet sim up --ota` keeps running in the
background while `fleet ota build`, `fleet ota push` and `fleet ota status` are used against the
same fleet home and broker (they find the rig's broker in the fleet.toml it writes).

Every process the test starts is stopped by its PID when the test ends, pass or fail.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET = [sys.executable, "-c", "from fleet.cli import main; main()"]  # the `fleet` entry point
NODES = 3


def _env():
    # the subprocesses import this checkout's fleet/firmware/protocol, whatever is installed
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("REDMESH_HOME", None)
    return env


def _fleet(args, timeout, outputs):
    """Run `fleet ARGS` to completion; record its output for the traceback check; return it."""
    proc = subprocess.run(FLEET + args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    outputs.append((" ".join(args), proc.stdout + proc.stderr))
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _stop(proc, timeout=30):
    """SIGINT (the rig stops what it started), then wait, then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait(pred, timeout_s, what, alive=None, every_s=2.0):
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        if alive is not None:
            assert alive.poll() is None, f"`fleet sim up` exited ({alive.returncode}) while waiting for {what}"
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.timeout(360)
def test_sim_up_in_background_with_ota_build_push_status(needs_virtual_rig, tmp_path):
    home = str(tmp_path / "home")
    rig_log = tmp_path / "sim_up.log"
    outputs = []
    t0 = time.monotonic()
    with open(rig_log, "wb") as log:
        rig = subprocess.Popen(FLEET + ["sim", "up", "--ota", "--nodes", str(NODES), "--gateways", "1",
                                        "--topology", "line", "--duration", "600", "--report-interval", "31",
                                        "--home", home],
                               cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    push = None
    try:
        def fleet_status():
            proc = subprocess.run(FLEET + ["status", "--json", "--home", home], cwd=ROOT, env=_env(),
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:  # the rig has not created the store yet
                return None
            return json.loads(proc.stdout)

        def every_node_placed():
            st = fleet_status()
            if st is None or len(st["nodes"]) != NODES:
                return None
            # a status from every node, and a parent from every non-gateway (the campaign orders
            # its waves by the collection tree)
            ok = all(n["last_heard"] and (n["role"] == "gateway" or n["parent"]) for n in st["nodes"])
            return st if ok else None

        st = _wait(every_node_placed, 150, "a status (and a parent) from every node", alive=rig)
        assert {n["firmware"] for n in st["nodes"]} == {"1.0.0"}, st["nodes"]
        t_up = time.monotonic() - t0

        built = _fleet(["ota", "build", "--version", "2.0.0", "--json", "--home", home], 120, outputs)
        info = json.loads(built.stdout)
        assert info["version"] == "2.0.0" and info["bseq"] == 2, info
        assert os.path.exists(info["path"])

        # push drives the campaign in the background; status is asked from another "console"
        push_out = tmp_path / "push.out"
        push_err = tmp_path / "push.err"
        with open(push_out, "wb") as out, open(push_err, "wb") as err:
            push = subprocess.Popen(FLEET + ["ota", "push", info["path"], "--timeout", "200", "--json",
                                             "--home", home],
                                    cwd=ROOT, env=_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        states_seen = set()

        def status_json():
            proc = subprocess.run(FLEET + ["ota", "status", "--json", "--home", home], cwd=ROOT, env=_env(),
                                  capture_output=True, text=True, timeout=60)
            outputs.append(("ota status --json", proc.stdout + proc.stderr))
            if proc.returncode != 0:
                assert "no OTA campaign" in proc.stderr, proc.stderr  # asked before push saved it
                return None
            s = json.loads(proc.stdout)
            assert set(s) >= {"campaign", "nodes", "totals"}, s
            assert s["campaign"]["bseq"] == info["bseq"] and s["campaign"]["version"] == "2.0.0", s["campaign"]
            assert sorted(n["node"] for n in s["nodes"]) == list(range(1, NODES + 1)), s["nodes"]
            for n in s["nodes"]:
                assert {"node", "version", "state"} <= set(n), n
                states_seen.add(n["state"])
            return s

        def pushed():
            if push.poll() is not None:
                return True
            status_json()
            return False

        _wait(pushed, 240, "`fleet ota push` to finish", alive=rig, every_s=5.0)
        outputs.append(("ota push", push_out.read_text() + push_err.read_text()))
        print("\n".join(push_err.read_text().splitlines()[-12:]))
        assert push.returncode == 0, (push.returncode, push_err.read_text())
        final = json.loads(push_out.read_text())
        t_push = time.monotonic() - t0 - t_up
        print("rig up in %.0f s, campaign %s in %.0f s, states seen %s"
              % (t_up, final["campaign"]["state"], t_push, sorted(states_seen)))
        assert final["campaign"]["state"] == "done", final

        s = status_json()
        assert s["campaign"]["state"] == "done", s
        assert all(n["state"] == "confirmed" and n["version"] == "2.0.0" for n in s["nodes"]), s["nodes"]

        # the rig is still running, and `fleet status` (the table too) still reads the home
        assert rig.poll() is None, rig_log.read_text()
        st = fleet_status()
        assert st is not None and len(st["nodes"]) == NODES
        assert {n["firmware"] for n in st["nodes"]} == {"2.0.0"}, st["nodes"]
        _fleet(["status", "--home", home], 60, outputs)
        _fleet(["ota", "status", "--home", home], 60, outputs)
    finally:
        if push is not None and push.poll() is None:
            push.kill()
            push.wait(timeout=10)
        _stop(rig)
        outputs.append(("sim up", rig_log.read_text(errors="replace")))
        print("\n".join(rig_log.read_text(errors="replace").splitlines()[-15:]))
    assert rig.returncode == 0, rig_log.read_text()
    assert "rig: stopped" in rig_log.read_text()
    for what, text in outputs:
        assert "Traceback" not in text, (what, text)
