"""`fleet provision`, `fleet node`, `fleet flash` against virtual boards driven by the real mpremote.

Every virtual board is started by the `boards` fixture and stopped in its finalizer; every
subprocess has a timeout. The self-test wait is exercised with a stand-in slot main.py that prints
what firmware/node.py prints (the real node needs a radio medium and a sensor warm-up of at least
30 s); the real firmware's path is test_real_firmware_reports_its_selftest, at the end.
"""
import json
import os
import subprocess
import sys
from unittest.mock import create_autospec

import esptool
import pytest
from board_trace import stop_boards
from click.testing import CliRunner

from fleet import flash as flashmod
from fleet import provision as prov
from fleet.cli import group
from fleet.errors import FleetError
from fleet.home import FleetHome
from fleet.sim import interp
from fleet.sim.board import VirtualBoard

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
FAKE_APP_SELFTEST = (
    b"import time\n"
    b"from firmware.config import load_config\n"
    b"from firmware.fsutil import PosixFS\n"
    b"c = load_config(PosixFS('/'))\n"
    b"print('node start id=%d role=%s fw=1.0.0 boot=1' % (c.node_id, c.role))\n"
    b"print('selftest ok node=%d role=%s sensor=1 radio=1 config=1 fw=1.0.0' % (c.node_id, c.role))\n"
    b"n = 0\n"
    b"while True:\n"
    b"    n += 1\n"
    b"    print('node tick', n)\n"
    b"    time.sleep_ms(100)\n"
)
FAKE_APP_SILENT = b"import time\nprint('node start id=1 role=node fw=1.0.0 boot=1')\nwhile True:\n    time.sleep_ms(100)\n"
FAKE_APP_CRASH = b"import firmware.no_such_module\n"


@pytest.fixture
def home(tmp_path):
    h = FleetHome(str(tmp_path / "home")).ensure()
    h.keys().init()
    return h


@pytest.fixture
def boards(tmp_path, request):
    """boards(n, macs=None) -> [VirtualBoard] started; all stopped at the end (traces printed
    on failure)."""
    started = []

    def make(n, macs=None, **kw):
        out = []
        for i in range(n):
            b = VirtualBoard(str(tmp_path / f"flash{len(started)}"), mac=(macs[i] if macs else None), **kw)
            started.append(b)
            b.start()
            out.append(b)
        return out

    try:
        yield make
    finally:
        stop_boards(request, started)


def fleet(*args, check=True):
    result = CliRunner().invoke(group, list(args), catch_exceptions=False)
    if check and result.exit_code != 0:
        pytest.fail(f"fleet {' '.join(args)} exited {result.exit_code}: {result.output}")
    return result


def secret_words(home, node_ids, extra=()):
    keys = home.keys()
    out = [keys.fleet_secret().hex(), keys.mesh_key().hex(), keys.signing_seed().hex()]
    out += [keys.node_key(n).hex() for n in node_ids]
    return [w for w in out + [w.upper() for w in out] + list(extra)]


def assert_no_secrets(text, words):
    for w in words:
        assert w not in text, "a secret appeared in the output"


def mpremote_cat(port, path):
    r = subprocess.run([MPREMOTE, "connect", port, "fs", "cat", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---- one board, and what it leaves behind ------------------------------------------------------


def test_provision_one_board_registers_it_and_writes_a_verified_slot(home, boards):
    (board,) = boards(1)
    r = fleet("provision", "--port", board.port, "--node-id", "7", "--pole", "P-0007", "--lat", "6.2601",
              "--lon", "-75.58", "--no-selftest", "--json", "--home", home.path)
    summary = json.loads(r.stdout)
    (res,) = summary["results"]
    assert res["ok"] and res["step"] == "done" and res["board_state"] == "provisioned"
    assert res["board"]["virtual"] and "virtual board accepted" in res["notes"]
    assert res["slot"] == "a" and res["files_written"] == summary["bundle_files"] + 3 + 1  # + root files, pointer
    assert res["bytes_written"] >= summary["bundle_bytes"]
    assert set(res["estimate_s"]) == {"115200", "921600"}
    assert res["estimate_s"]["115200"] > res["estimate_s"]["921600"] > 0

    # registered, and `fleet status` shows it at once as never heard
    store = home.store()
    try:
        reg = store.node(7)
    finally:
        store.close()
    assert reg["mac"] == res["mac"] and reg["pole"] == "P-0007" and reg["lat"] == 6.2601 and reg["fw_version"]
    status = json.loads(fleet("status", "--json", "--home", home.path).stdout)
    assert [(n["node"], n["state"]) for n in status["nodes"]] == [(7, "never")]

    # the real mpremote command sees the layout: pointer last written, naming slot a
    pointer = mpremote_cat(board.port, ":/active")
    assert "slot=a" in pointer and "state=confirmed" in pointer
    assert mpremote_cat(board.port, ":/main.py").startswith("# Red Mesh root main.py")

    # fleet node info: slots, versions, config without secrets
    info = json.loads(fleet("node", "info", "--port", board.port, "--json", "--home", home.path).stdout)
    assert info["provisioned"] and info["config_of_this_fleet"] is True
    assert info["slots"]["a"]["active"] and info["slots"]["a"]["files"] == summary["bundle_files"]
    assert info["config"]["node_id"] == 7 and "node_key" not in info["config"] and "mesh_key" not in info["config"]
    assert info["config"]["fleet_pub"] == home.keys().public_key().hex()
    assert_no_secrets(r.output + json.dumps(info), secret_words(home, [7]))


def test_rerun_is_idempotent_and_writes_nothing(home, boards):
    (board,) = boards(1)
    spec = [prov.NodeSpec(node_id=3, port=board.port)]
    # with the virtual node's sim section: the UDP port picked the first time is kept
    opts = prov.ProvisionOptions(selftest=False, sim_medium_port=47999)
    first = prov.provision(home, spec, opts)["results"][0]
    assert first["ok"] and first["bytes_written"] > 100_000
    second = prov.provision(home, spec, opts)["results"][0]
    assert second["ok"], second["error"]
    assert second["bytes_written"] == 0 and second["files_written"] == 0
    assert second["files_skipped"] == first["files_total"]
    # nothing to copy: the session is a few hundred bytes of payload-free traffic
    assert second["bytes_sent"] < first["bytes_sent"] / 20


def test_four_boards_in_parallel(home, boards):
    bs = boards(4)
    args = ["provision", "--no-selftest", "--json", "--home", home.path]
    for i, b in enumerate(bs):
        args += ["--port", b.port, "--node-id", str(100 + i)]
    summary = json.loads(fleet(*args).stdout)
    assert summary["ok"] == 4 and summary["failed"] == 0
    macs = {r["mac"] for r in summary["results"]}
    assert len(macs) == 4
    store = home.store()
    try:
        assert {n["node"]: n["mac"] for n in store.nodes()} == {r["node_id"]: r["mac"] for r in summary["results"]}
    finally:
        store.close()
    for r in summary["results"]:
        print(f"{r['port']}: {r['elapsed_s']:.2f} s on a virtual board; estimated "
              f"{r['estimate_s']['115200']} s at 115200, {r['estimate_s']['921600']} s at 921600")


# ---- failures: unplugged, foreign, duplicate, bad sheet ------------------------------------------


def test_unplugged_mid_copy_leaves_the_board_untouched_and_a_rerun_repairs_it(home, boards):
    (board,) = boards(1)

    def unplug_after_40kb(port, step, done, total):
        if step == "copy" and done is not None and done > 40_000 and board.port is not None:
            board.kill()

    out = prov.provision(home, [prov.NodeSpec(node_id=9, port=board.port)], prov.ProvisionOptions(selftest=False),
                         on_progress=unplug_after_40kb)
    (res,) = out["results"]
    assert not res["ok"] and res["step"] == "copy" and res["board_state"] == "untouched"
    assert "stopped answering" in res["error"] and "run the command again" in res["error"]
    store = home.store(create=True)
    try:
        assert store.node(9) is None
    finally:
        store.close()

    port = board.start()  # plug it back in (the flash directory survived)
    info = prov.node_info(port, home=home)
    assert not info["provisioned"] and info["pointer"] is None  # boots nothing new: untouched
    if res["slot_storage"] == "files":
        assert 0 < info["slots"]["a"]["files"] < out["bundle_files"]  # the partial copy is inert
    else:  # a partial image in slot a's romfs partition: no pointer names it, nothing mounts it
        assert info["slots"]["a"]["files"] == 0

    again = prov.provision(home, [prov.NodeSpec(node_id=9, port=port)], prov.ProvisionOptions(selftest=False))
    (res2,) = again["results"]
    assert res2["ok"], res2["error"]
    if res2["slot_storage"] == "files":  # files already there are not sent again
        assert res2["files_skipped"] > 0 and res2["bytes_written"] < again["bundle_bytes"]
    else:  # a romfs partition is written whole (erase, then the image), as mpremote romfs deploy does
        assert res2["files_skipped"] == 0 and res2["files_written"] == again["bundle_files"] + 3 + 1
    assert prov.node_info(port, home=home)["provisioned"]


def test_cancel_stops_before_the_commit(home, boards):
    import threading

    (board,) = boards(1)
    cancel = threading.Event()

    def cancel_during_copy(port, step, done, total):
        if step == "copy" and done:
            cancel.set()

    out = prov.provision(home, [prov.NodeSpec(node_id=2, port=board.port)], prov.ProvisionOptions(selftest=False),
                         on_progress=cancel_during_copy, cancel=cancel)
    (res,) = out["results"]
    assert not res["ok"] and "interrupted" in res["error"] and res["board_state"] == "untouched"
    assert not prov.node_info(board.port)["provisioned"]


def test_a_board_of_another_fleet_is_refused_unless_replace(home, boards, tmp_path):
    (board,) = boards(1)
    assert prov.provision(home, [prov.NodeSpec(node_id=4, port=board.port)],
                          prov.ProvisionOptions(selftest=False))["ok"] == 1
    other = FleetHome(str(tmp_path / "other")).ensure()
    other.keys().init()
    r = fleet("provision", "--port", board.port, "--node-id", "4", "--no-selftest", "--home", other.path, check=False)
    assert r.exit_code == 1
    assert "another fleet or network" in r.stderr and "--replace" in r.stderr and "untouched" in r.stderr
    assert prov.node_info(board.port, home=home)["config_of_this_fleet"] is True  # unchanged

    r = fleet("provision", "--port", board.port, "--node-id", "4", "--no-selftest", "--replace", "--home", other.path)
    assert " ok " in r.stdout and "1 provisioned, 0 failed" in r.stdout  # the text summary
    assert "virtual board accepted" in r.stderr
    assert prov.node_info(board.port, home=other)["config_of_this_fleet"] is True
    assert_no_secrets(r.output, secret_words(home, [4]) + secret_words(other, [4]))


def test_a_foreign_application_config_is_refused(home, boards):
    (board,) = boards(1)
    subprocess.run([MPREMOTE, "connect", board.port, "exec", "open('/config.cbor','wb').write(b'not cbor at all')"],
                   capture_output=True, timeout=30, check=True)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=4, port=board.port)],
                            prov.ProvisionOptions(selftest=False))["results"]
    assert not res["ok"] and res["step"] == "check" and "not a Red Mesh config" in res["error"]


def test_another_application_without_a_config_is_refused_unless_replace(home, boards):
    # a stock board has a boot.py and no main.py; one running someone else's main.py must not
    # be overwritten by accident
    (board,) = boards(1)
    subprocess.run([MPREMOTE, "connect", board.port, "exec", "open('/main.py','w').write('print(\\'their app\\')')"],
                   capture_output=True, timeout=30, check=True)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=5, port=board.port)],
                            prov.ProvisionOptions(selftest=False))["results"]
    assert not res["ok"] and res["step"] == "check" and "another application" in res["error"]
    assert res["board_state"] == "untouched"
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=5, port=board.port)],
                            prov.ProvisionOptions(selftest=False, replace=True))["results"]
    assert res["ok"], res["error"]


def test_a_virtual_board_without_the_rigs_medium_is_refused_before_writing(home, boards):
    # its firmware would sit in its safe state (no sim section) and the self-test could not pass
    (board,) = boards(1)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=6, port=board.port)], prov.ProvisionOptions())["results"]
    assert not res["ok"] and res["step"] == "check" and "--sim-medium-port" in res["error"]
    assert res["board_state"] == "untouched"


def test_duplicate_node_id_and_a_board_that_is_another_node(home, boards):
    b1, b2 = boards(2)
    opts = prov.ProvisionOptions(selftest=False)
    assert prov.provision(home, [prov.NodeSpec(node_id=5, port=b1.port)], opts)["ok"] == 1
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=5, port=b2.port)], opts)["results"]
    assert not res["ok"] and res["step"] == "check" and res["board_state"] == "untouched"
    assert "already registered to another board" in res["error"] and "--replace" in res["error"]
    assert not prov.node_info(b2.port)["provisioned"]

    # the first board is node 5: giving it another id needs --replace
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=6, port=b1.port)], opts)["results"]
    assert not res["ok"] and "already node 5" in res["error"]

    (res,) = prov.provision(home, [prov.NodeSpec(node_id=5, port=b2.port)],
                            prov.ProvisionOptions(selftest=False, replace=True))["results"]
    assert res["ok"] and any("moved from MAC" in n for n in res["notes"])
    store = home.store()
    try:
        assert store.node(5)["mac"] == res["mac"]
    finally:
        store.close()

    with pytest.raises(FleetError, match="appears twice"):
        prov.provision(home, [prov.NodeSpec(node_id=8, port=b1.port), prov.NodeSpec(node_id=8, port=b2.port)], opts)


def test_csv_sheet_bad_rows_are_all_reported_by_row_number(home, tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "port,node_id,pole,lat,lon,role\n"
        "/dev/ttyUSB0,11,P11,6.26,-75.58,node\n"
        "/dev/ttyUSB1,twelve,P12,6.26,-75.58,node\n"
        "/dev/ttyUSB2,13,P13,96.0,-75.58,node\n"
        "/dev/ttyUSB3,11,P14,6.26,-75.58,relay\n"
    )
    r = fleet("provision", "--from-csv", str(sheet), "--home", home.path, check=False)
    assert r.exit_code == 1
    assert "3 bad row(s), nothing was provisioned" in r.stderr
    assert "row 3: node_id 'twelve' is not an integer" in r.stderr
    assert "row 4: lat '96.0'" in r.stderr
    assert "row 5: role 'relay'" in r.stderr and "node_id 11 is also on row 2" in r.stderr


def test_csv_sheet_by_mac_finds_the_boards_and_provisions_them(home, boards, tmp_path):
    macs = ["02:00:00:00:00:21", "02:00:00:00:00:22"]
    b1, b2 = boards(2, macs=macs)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "mac,node_id,pole,lat,lon,role\n"
        f"{macs[1]},22,P22,6.2650,-75.5900,node\n"
        f"{macs[0]},21,P21,6.2651,-75.5901,node\n"
        "02:00:00:00:00:99,29,P29,6.2652,-75.5902,node\n"  # not plugged in: reported, not an error
    )
    r = fleet("provision", "--from-csv", str(sheet), "--port", b1.port, "--port", b2.port, "--no-selftest",
              "--json", "--home", home.path)
    summary = json.loads(r.stdout)
    got = {res["node_id"]: (res["port"], res["mac"]) for res in summary["results"]}
    assert got == {21: (b1.port, macs[0]), 22: (b2.port, macs[1])}
    assert summary["skipped"] == [{"row": 4, "mac": "02:00:00:00:00:99", "node_id": 29}]


def test_gateway_config_carries_the_uplink_and_no_secret_is_shown(home, boards):
    (board,) = boards(1)
    password = "correct-horse-battery-staple"
    r = CliRunner().invoke(
        group, ["provision", "--port", board.port, "--node-id", "1", "--role", "gateway", "--broker",
                "mqtt://10.0.0.5:1884", "--wifi-ssid", "poles", "--no-selftest", "--home", home.path],
        env={"REDMESH_WIFI_PASSWORD": password}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    info = prov.node_info(board.port, home=home)
    assert info["config"]["role"] == "gateway"
    assert info["config"]["uplink"] == {"broker_host": "10.0.0.5", "broker_port": 1884, "wifi_ssid": "poles",
                                        "client_id": "gw-1"}
    logs = "\n".join(prov.node_logs(board.port, timeout_s=1.0))
    assert_no_secrets(r.output + json.dumps(info) + logs, secret_words(home, [1], [password]))


# ---- the self-test wait --------------------------------------------------------------------------


# the stand-in apps below never touch the radio: any medium port satisfies the check step
_NO_RADIO = 9


def test_selftest_line_is_awaited_and_checked(home, boards):
    (board,) = boards(1)
    opts = prov.ProvisionOptions(selftest_timeout_s=20, extra_files={"main.py": FAKE_APP_SELFTEST}, sim_medium_port=_NO_RADIO)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=12, port=board.port)], opts)["results"]
    assert res["ok"], res["error"]
    assert res["selftest"].startswith("selftest ok node=12")

    # fleet node logs: the running app's prints, without stopping it
    lines = fleet("node", "logs", "--port", board.port, "--lines", "3").stdout.splitlines()
    assert len(lines) == 3 and all(ln.startswith("node tick") for ln in lines)
    # fleet node reset: the board reboots into its app
    out = json.loads(fleet("node", "reset", "--port", board.port, "--json").stdout)
    assert out["boot_seen"]


def test_a_stale_image_in_the_target_slots_romfs_partition_is_erased_before_the_switch(home, boards, tmp_path):
    # A board built with two romfs partitions (the node's hardware spec) runs a slot from its
    # partition when that holds an image, else from the slot's directory. An app too big for the
    # partition is written as files: the partition must then be erased, or the board would boot
    # the image left in it. Slot a's partition holds an old app that never reports a self-test;
    # the provisioned one does (and carries 300 KB of data no ROMFS partition here can hold).
    if not interp.has_romfs():
        pytest.skip("the interpreter maps no romfs partitions (no 32-bit rig build: make mp32)")
    from fleet import romfs
    from fleet.sim.board.flash import romfs_paths

    flash = tmp_path / "flash0"  # the first board's flash directory (the boards fixture)
    flash.mkdir()
    part_a, part_b = romfs_paths(str(flash))
    with open(part_a, "wb") as f:
        f.write(romfs.segment(romfs.image_of_files({"main.py": FAKE_APP_SILENT})))
    (board,) = boards(1)
    big = os.urandom(300 * 1024)
    opts = prov.ProvisionOptions(selftest_timeout_s=20, extra_files={"main.py": FAKE_APP_SELFTEST, "data.bin": big},
                                 sim_medium_port=_NO_RADIO)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=16, port=board.port)], opts)["results"]
    assert res["board"]["romfs_partitions"] == 2 and res["board"]["romfs_bytes"] == [256 * 1024] * 2
    assert res["ok"], res["error"]
    assert res["slot_storage"] == "files" and any("does not fit the board's romfs partitions" in n for n in res["notes"])
    assert res["slot"] == "a" and res["selftest"].startswith("selftest ok node=16")
    with open(part_a, "rb") as f:
        assert f.read(4096) == b"\xff" * 4096  # the old image's header sector is erased flash
    with open(part_b, "rb") as f:
        assert f.read(3) == b"\xff" * 3  # the other partition is left alone


def test_selftest_failures_say_what_was_missing(home, boards):
    b1, b2 = boards(2)
    crash = prov.ProvisionOptions(selftest_timeout_s=20, extra_files={"main.py": FAKE_APP_CRASH}, sim_medium_port=_NO_RADIO)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=13, port=b1.port)], crash)["results"]
    assert not res["ok"] and res["step"] == "selftest" and res["board_state"] == "provisioned"
    assert "the app is not running" in res["error"] and "ImportError" in res["error"]

    silent = prov.ProvisionOptions(selftest_timeout_s=2, extra_files={"main.py": FAKE_APP_SILENT}, sim_medium_port=_NO_RADIO)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=14, port=b2.port)], silent)["results"]
    assert not res["ok"] and res["step"] == "selftest"
    assert "no self-test report within 2 s" in res["error"] and "did not confirm its sensor and radio" in res["error"]
    store = home.store(create=True)
    try:
        assert store.node(14) is None  # registered only once healthy
    finally:
        store.close()


def test_real_firmware_reports_its_selftest(home, boards):
    # A provisioned node boots from OTA slots: the rig's heap for those (fleet/sim/interp.py).
    (board,) = boards(1)  # the virtual board's default heap: a provisioned node's (123k with romfs partitions)
    opts = prov.ProvisionOptions(selftest_timeout_s=90, sim_medium_port=47999)
    (res,) = prov.provision(home, [prov.NodeSpec(node_id=15, port=board.port)], opts)["results"]
    assert res["ok"], res["error"]
    assert res["selftest"].startswith("selftest ok node=15")
    # with the rig's romfs partitions the app went into one and runs there, at the board budget
    assert res["slot_storage"] == ("romfs" if interp.has_romfs() else "files")


def test_a_home_without_keys_is_refused_before_any_board_is_touched(tmp_path):
    bare = FleetHome(str(tmp_path / "bare")).ensure()
    with pytest.raises(FleetError, match="fleet keys init"):
        prov.provision(bare, [prov.NodeSpec(node_id=1, port="/dev/ttyUSB0")])


def test_no_board_and_a_silent_port_are_clear_errors(home, tmp_path):
    master, slave = os.openpty()  # a serial port where nothing answers
    try:
        specs = [prov.NodeSpec(node_id=1, port=os.ttyname(slave)),
                 prov.NodeSpec(node_id=2, port=str(tmp_path / "ttyUSB9"))]
        out = prov.provision(home, specs, prov.ProvisionOptions(selftest=False, connect_timeout_s=1))
    finally:
        os.close(master)
        os.close(slave)
    silent, missing = out["results"]
    assert silent["step"] == "detect" and "no MicroPython REPL answered: nothing answered" in silent["error"]
    assert missing["step"] == "connect" and "no such serial port" in missing["error"]
    assert silent["board_state"] == missing["board_state"] == "untouched"


# ---- detection rules (a fake board at the exec boundary) -------------------------------------------


class _FakeDetectBoard:
    port = "/dev/fake"

    def __init__(self, **answer):
        base = {"impl": "micropython", "version": "1.24.1", "platform": "esp32", "machine": "Generic ESP32 module",
                "uid": b"\x24\x6f\x28\xaa\xbb\xcc", "virtual": False, "free": 2_000_000, "total": 2_097_152}
        base.update(answer)
        self.answer = repr(base).encode()

    def exec(self, code, what=""):
        return self.answer + b"\r\n"


@pytest.mark.parametrize("answer, supported, reason", [
    ({}, True, "ESP32"),
    ({"platform": "linux", "virtual": True}, True, "virtual board accepted"),
    ({"platform": "rp2", "machine": "Raspberry Pi Pico"}, False, "not an ESP32"),
    ({"impl": "circuitpython"}, False, "not MicroPython"),
])
def test_detect_accepts_esp32_and_virtual_boards_only(answer, supported, reason):
    info = prov.detect(_FakeDetectBoard(**answer))
    assert info["supported"] is supported and reason in info["reason"]
    if supported:
        assert info["mac"] == "24:6f:28:aa:bb:cc"


# ---- fleet flash -----------------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "ESP32_GENERIC-v1.24.1.bin"
    p.write_bytes(b"\xe9" + bytes(1_500_000))
    return p


def test_flash_runs_esptool_with_checked_arguments(image):
    probe = create_autospec(flashmod.probe_chip, return_value=("ESP32", 4 * 1024 * 1024))
    fake_main = create_autospec(esptool.main)
    out = flashmod.flash("/dev/ttyUSB0", str(image), baud=921600, probe=probe, esptool_main=fake_main)
    probe.assert_called_once_with("/dev/ttyUSB0", 115200, 3)
    fake_main.assert_called_once_with([
        "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "921600", "--before", "default-reset",
        "--after", "hard-reset", "write-flash", "--flash-size", "keep", "0x1000", str(image),
    ])
    assert out["chip"] == "ESP32" and out["image_bytes"] == 1_500_001


def test_flash_refuses_wrong_images_and_chips_before_writing(image, tmp_path):
    fake_main = create_autospec(esptool.main)
    esp32 = create_autospec(flashmod.probe_chip, return_value=("ESP32", 4 * 1024 * 1024))
    with pytest.raises(FleetError, match="cannot read the image"):
        flashmod.flash("/dev/ttyUSB0", str(tmp_path / "missing.bin"), probe=esp32, esptool_main=fake_main)
    elf = tmp_path / "firmware.elf"
    elf.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(FleetError, match="not an ESP32 firmware image"):
        flashmod.flash("/dev/ttyUSB0", str(elf), probe=esp32, esptool_main=fake_main)
    s3 = create_autospec(flashmod.probe_chip, return_value=("ESP32-S3", 8 * 1024 * 1024))
    with pytest.raises(FleetError, match="not an ESP32"):
        flashmod.flash("/dev/ttyUSB0", str(image), probe=s3, esptool_main=fake_main)
    small = create_autospec(flashmod.probe_chip, return_value=("ESP32", 1024 * 1024))
    with pytest.raises(FleetError, match="does not fit"):
        flashmod.flash("/dev/ttyUSB0", str(image), probe=small, esptool_main=fake_main)
    with pytest.raises(FleetError, match="baud 12345"):
        flashmod.flash("/dev/ttyUSB0", str(image), baud=12345, probe=esp32, esptool_main=fake_main)
    fake_main.assert_not_called()


def test_flash_on_a_port_without_a_bootloader_says_so(image, boards):
    (board,) = boards(1)  # answers with MicroPython, not the ROM bootloader
    r = fleet("flash", "--port", board.port, "--image", str(image), "--connect-attempts", "1", check=False)
    assert r.exit_code == 1
    assert "no ESP32 bootloader answered" in r.stderr and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash


def test_flash_cli_checks_provisioning_options_before_writing(image):
    r = fleet("flash", "--port", "/dev/ttyUSB0", "--image", str(image), "--then-provision", check=False)
    assert r.exit_code == 1 and "--node-id" in r.stderr
