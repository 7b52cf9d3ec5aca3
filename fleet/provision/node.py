"""`fleet node info / logs / reset`: look at a board on a USB port."""

from fleet.errors import FleetError
from fleet.mpboard import DEFAULT_BAUD, MpBoard
from fleet.provision.board import config_identity, detect, parse_pointer, scrub
from fleet.provision.model import ROOT_FILES, SLOTS

# ---- fleet node info / logs / reset -----------------------------------------------------------


def node_info(port, *, home=None, baud=DEFAULT_BAUD, restart=True, board_factory=MpBoard):
    """What is on the board: detection data, the slot pointer and each slot's files, the last OTA
    result, the config without secrets (and whether it belongs to `home`'s fleet), free flash.
    The app is interrupted to read it and restarted after (unless restart=False)."""
    from firmware import boot as fw_boot
    from firmware.config import ConfigError, parse_config
    from firmware.config_check import public_dict

    with board_factory(port, baud=baud) as board:
        # No soft reset: it would run boot.py once more (a trial boot counts boots); the app is
        # only interrupted, and small reads need little heap.
        board.enter_raw(soft_reset=False)
        info = detect(board)
        found, dirs = board.hash_files(dirs=["/a", "/b"], files=list(ROOT_FILES) + ["/active", "/ota_result"],
                                       what="listing the board's files")
        pointer_raw = board.read_file("/active", "reading the slot pointer") if "/active" in found else None
        result_raw = board.read_file("/ota_result", "reading the OTA result") if "/ota_result" in found else None
        cfg_raw = board.read_file("/config.cbor", "reading the config") if "/config.cbor" in found else None
        if restart:
            board.soft_reset_to_app()
    pointer = parse_pointer(pointer_raw)
    slots = {}
    for s in SLOTS:
        files = {p: v for p, v in found.items() if p.startswith(f"/{s}/")}
        slots[s] = {"present": f"/{s}" in dirs, "files": len(files), "bytes": sum(v[0] for v in files.values()),
                    "active": bool(pointer and pointer["slot"] == s)}
    if pointer:
        active = slots[pointer["slot"]]
        active["version"] = pointer.get("version")
        active["bseq"] = pointer.get("bseq")
        fb = pointer.get("fallback")
        if fb in slots:
            slots[fb]["version"] = pointer.get("fallback_version")
            slots[fb]["bseq"] = pointer.get("fallback_bseq")
    config, config_error, ours = None, None, None
    if cfg_raw is not None:
        try:
            config = public_dict(parse_config(cfg_raw))
        except ConfigError as e:
            config_error = str(e)
        ident = config_identity(cfg_raw)
        if home is not None and ident is not None:
            try:
                keys = home.keys()
                ours = ident[0] == home.net_id and ident[1] == keys.public_key()
            except FleetError:
                ours = None
    ota_result = None
    if result_raw is not None:
        try:
            ota_result = fw_boot.parse_kv(result_raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            ota_result = {"error": "unreadable"}
    provisioned = bool(pointer and cfg_raw is not None)
    return {
        "port": port, "board": info, "mac": info["mac"], "provisioned": provisioned,
        "pointer": pointer, "slots": slots, "ota_result": ota_result,
        "root_files": {p: {"bytes": v[0], "sha256": v[1]} for p, v in found.items() if p.count("/") == 1},
        "config": config, "config_error": config_error, "config_of_this_fleet": ours,
        "free_flash_bytes": info["free_flash_bytes"], "total_flash_bytes": info["total_flash_bytes"],
        "restarted": restart,
    }


CRASH_LOG_PATH = "/crash.log"  # firmware/boot.py CRASH_LOG, at the flash root


def _crash_log_lines(board, secrets=()):
    data = board.read_file(CRASH_LOG_PATH, "reading the crash log")
    if data is None:
        return ["--- %s: none (no crash recorded on this board) ---" % CRASH_LOG_PATH]
    text = scrub(data.decode("utf-8", "replace"), secrets)
    return (["--- %s (the board's last crashes, newest last) ---" % CRASH_LOG_PATH]
            + text.rstrip("\n").split("\n") + ["--- end of %s ---" % CRASH_LOG_PATH])


def node_logs(port, *, lines=None, follow=False, timeout_s=10.0, baud=DEFAULT_BAUD, board_factory=MpBoard,
              crash_log=False):
    """Yield the board's log: console lines as they come (the app keeps running: like
    `mpremote resume`), stopping after `lines` lines, or after `timeout_s` unless `follow`.

    A board idle at its REPL (an app that ended or crashed with no watchdog to reset it) prints
    nothing: then the crash log on its flash (firmware/boot.py writes /crash.log) comes first,
    with a line saying the app is not running; the board is left at its REPL. With `crash_log`,
    a running app is interrupted to read the crash log and restarted (soft reset) before the
    console is followed."""
    with board_factory(port, baud=baud) as board:
        if board.at_friendly_repl():
            board.enter_raw(soft_reset=False)
            yield from _crash_log_lines(board)
            board.leave_raw()
            yield ("--- the board is at its REPL: the app is not running (it ended or crashed, and no watchdog "
                   "reset it); `fleet node reset --port %s` restarts it ---" % port)
            return
        if crash_log:
            board.enter_raw(soft_reset=False)
            yield from _crash_log_lines(board)
            board.soft_reset_to_app()
            yield "--- console (the app restarted) ---"
        n = 0
        for line in board.console_lines(None if follow else timeout_s, join_mid_stream=True):
            yield line
            n += 1
            if lines is not None and n >= lines:
                return
        if n == 0 and not crash_log:
            yield ("--- nothing on the console in %g s (a quiet app, or the safe state, which prints every 30 s): "
                   "`fleet node logs --port %s --crash-log` stops the app to read %s ---" % (timeout_s, port,
                                                                                            CRASH_LOG_PATH))


def node_reset(port, *, baud=DEFAULT_BAUD, wait_s=5.0, board_factory=MpBoard):
    """Hard-reset the board (machine.reset()); return {"port", "reset", "boot_seen", "first_lines"}:
    whether a boot was seen on the console within `wait_s`."""
    with board_factory(port, baud=baud) as board:
        board.enter_raw(soft_reset=False)
        board.hard_reset()
        seen = []
        for line in board.console_lines(wait_s, stop=lambda: len(seen) >= 3):
            if line.strip():
                seen.append(line)
    return {"port": port, "reset": "hard", "boot_seen": bool(seen), "first_lines": seen}
