"""Running provisioning: the fleet's settings read once (_Fleet), one board's steps (_Run), many
boards in parallel (provision) and locating boards by MAC."""
import base64
import hashlib
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fleet import devstrings
from fleet.errors import FleetError
from fleet.mpboard import DEFAULT_BAUD, MpBoard
from fleet.provision.board import config_identity, decode_config, detect, norm_mac, parse_pointer, scrub
from fleet.provision.bundle import build_bundle, with_extra_files
from fleet.provision.model import (
    _BEFORE_COMMIT,
    ROLES,
    ROOT_FILES,
    SENSORS,
    SLOTS,
    ProvisionError,
    ProvisionOptions,
)
from fleet.provision.plan import ESTIMATE_BAUDS, estimate_usb_seconds, plan_copy

# ---- config -----------------------------------------------------------------------------------


def _broker_host_port(url):
    m = re.match(r"^(?:mqtts?://)?\[?([^\]/:]+)\]?(?::(\d+))?/?$", url or "")
    if not m:
        raise FleetError(f"broker URL {url!r} is not mqtt://HOST[:PORT]: fix --broker or [broker] url in fleet.toml")
    return m.group(1), int(m.group(2) or 1883)


def _free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class _Fleet:
    """What every board of a run needs from the fleet home, read once in the main thread."""

    def __init__(self, home, options):
        self.home = home
        self.options = options
        keys = home.keys()
        self.net_id = home.net_id
        self.fleet_pub = keys.public_key()
        # the mesh key of the epoch in force (fleet keys rotate): a node provisioned after a
        # rotation talks to the fleet at once; epoch 0 writes no mesh_epoch (configs as before)
        self.mesh_epoch = keys.epoch_state()["epoch"]
        self.mesh_key = keys.mesh_key(self.mesh_epoch)
        self.keys = keys
        uplink = home.config.get("uplink", {}) if isinstance(home.config.get("uplink"), dict) else {}
        self.broker_url = options.broker_url or home.broker_url
        self.wifi_ssid = options.wifi_ssid if options.wifi_ssid is not None else uplink.get("wifi_ssid", "")
        self.wifi_password = (options.wifi_password if options.wifi_password is not None
                              else uplink.get("wifi_password", ""))
        self.store_lock = threading.Lock()

    def secrets(self, node_ids):
        """Hex and raw forms of every secret of this run, to scrub from any text shown."""
        out = [self.mesh_key] + [self.keys.node_key(n) for n in node_ids]
        words = []
        for k in out:
            words += [k.hex(), k.hex().upper(), base64.b64encode(k).decode()]
        if self.wifi_password:
            words.append(self.wifi_password)
        return [w for w in words if w]

    def config_dict(self, spec, mac_bytes, previous=None):
        o = self.options
        d = {
            "config_version": 1, "node_id": spec.node_id, "role": spec.role, "net_id": self.net_id,
            "node_key": self.keys.node_key(spec.node_id), "mesh_key": self.mesh_key, "fleet_pub": self.fleet_pub,
            "sensor": spec.sensor,
        }
        if self.mesh_epoch:
            d["mesh_epoch"] = self.mesh_epoch
        for key in ("report_interval_s", "warmup_s", "sample_window_s", "continuous", "radio_channel"):
            v = getattr(o, key)
            if v is not None:
                d[key] = v
        if spec.role == "gateway":
            host, port = _broker_host_port(self.broker_url)
            d["uplink"] = {"broker_host": host, "broker_port": port, "wifi_ssid": self.wifi_ssid or "",
                           "wifi_password": self.wifi_password or ""}
        if o.sim_medium_port is not None:
            # keep the port a previous run chose, so a re-run leaves the config byte-identical
            old_sim = previous.get("sim") if isinstance(previous, dict) else None
            my_port = spec.sim_port or (old_sim.get("my_port") if isinstance(old_sim, dict) else None)
            d["sim"] = {"medium_port": o.sim_medium_port, "my_port": my_port or _free_udp_port(),
                        "mac": mac_bytes, "seed": spec.node_id}
        return d

    def config_bytes(self, spec, mac_bytes, previous=None):
        """The node's config.cbor; `previous` (the board's decoded config, if ours) keeps choices
        that are not options (the virtual node's UDP port). Raises ProvisionError."""
        from firmware.config_check import ConfigError, dump_config

        try:
            return dump_config(self.config_dict(spec, mac_bytes, previous))
        except ConfigError as e:
            hint = ""
            if "wifi_ssid" in str(e):
                hint = " (give --wifi-ssid/--wifi-password, or [uplink] wifi_ssid in fleet.toml)"
            raise ProvisionError(f"{spec.where()}: the node's config is invalid: {e}{hint}", "check") from e

    def warmup_s(self):
        return self.options.warmup_s or 30


_ROM_LOCK = threading.Lock()


def _rom_image_of(bundle):
    """The bundle's slot files as one ROMFS image (fleet/romfs.py, mpremote's writer), built once
    per bundle for all the boards provisioned in parallel."""
    with _ROM_LOCK:
        img = getattr(bundle, "rom_image", None)
        if img is None:
            from fleet import romfs

            img = bundle.rom_image = romfs.image_of_files(bundle.files)
        return img


# ---- one board --------------------------------------------------------------------------------


class _Run:
    """State of one board's provisioning (runs in its own thread)."""

    def __init__(self, fleet, bundle, spec, options, on_progress, board_factory, secrets, cancel=None):
        self.cancel = cancel
        self.fleet = fleet
        self.bundle = bundle
        self.spec = spec
        self.o = options
        self.on_progress = on_progress
        self.board_factory = board_factory
        self.secrets = secrets
        self.step = "connect"
        self.t0 = time.monotonic()
        self.t_step = self.t0
        self.phases = {}
        self.res = {
            "port": spec.port, "node_id": spec.node_id, "row": spec.row, "role": spec.role, "pole": spec.pole,
            "lat": spec.lat, "lon": spec.lon, "sensor": spec.sensor, "ok": False, "step": None, "error": None,
            "board_state": "untouched", "mac": None, "board": None, "notes": [],
            "slot": None, "fw_version": bundle.version, "fw_seq": bundle.seq,
            "files_total": len(bundle.files) + len(ROOT_FILES), "files_written": 0, "files_skipped": 0,
            "files_removed": 0, "bytes_written": 0, "bytes_sent": 0, "bytes_received": 0, "execs": 0,
            "selftest": None, "elapsed_s": None, "usb_s": None, "selftest_s": None, "phases_s": self.phases,
            "estimate_s": None,
        }

    def progress(self, done=None, total=None):
        if self.cancel is not None and self.cancel.is_set() and self.step in _BEFORE_COMMIT:
            # Ctrl-C: stop at the next chunk, never inside the commit (nothing was switched yet)
            raise ProvisionError(f"{self.spec.port} (node {self.spec.node_id}): interrupted by the user at step "
                                 f"{self.step}; run the command again to finish", self.step)
        if self.on_progress is not None:
            self.on_progress(self.spec.port, self.step, done, total)

    def _close_phase(self):
        now = time.monotonic()
        self.phases[self.step] = round(self.phases.get(self.step, 0) + now - self.t_step, 3)
        self.t_step = now

    def enter(self, step):
        self._close_phase()
        self.step = step
        self.progress()

    def fail(self, msg):
        raise ProvisionError(f"{self.spec.port} (node {self.spec.node_id}): {msg}", self.step)

    def run(self):
        board = None
        try:
            board = self.board_factory(self.spec.port, baud=self.o.baud)
            self.progress()
            board.open()
            self.enter("detect")
            board.enter_raw(soft_reset=True, timeout_s=self.o.connect_timeout_s)
            self._provision(board)
            self.res["ok"] = True
        except FleetError as e:
            self.res["error"] = scrub(e.message, self.secrets)
            self.res["step"] = getattr(e, "step", None) or self.step
        except Exception as e:  # noqa: BLE001 - one board's bug must not hide the others' results
            self.res["error"] = scrub(f"{self.spec.port}: internal error at step {self.step}: "
                                       f"{type(e).__name__}: {e}", self.secrets)
            self.res["step"] = self.step
        finally:
            self._close_phase()
            if board is not None:
                self.res["bytes_sent"] = board.bytes_out
                self.res["bytes_received"] = board.bytes_in
                self.res["execs"] = board.execs
                board.close()
            self.res["elapsed_s"] = round(time.monotonic() - self.t0, 3)
            if not self.res["ok"]:
                s = self.res["step"]
                self.res["board_state"] = ("untouched" if s in _BEFORE_COMMIT else
                                           "unknown: the commit was interrupted, re-run to finish" if s == "commit"
                                           else "provisioned")
            else:
                self.res["step"] = "done"
        return self.res

    # ---- the steps ------------------------------------------------------------------------

    def _provision(self, board):
        spec, o, bundle = self.spec, self.o, self.bundle
        info = detect(board)
        self.res["board"] = info
        self.res["mac"] = info["mac"]
        if not info["supported"]:
            self.fail(f"refusing this board: {info['reason']}. Red Mesh runs on ESP32 boards with MicroPython "
                      f"(fleet flash --port {spec.port} --image <micropython-esp32.bin>)")
        if info["virtual"]:
            self.res["notes"].append("virtual board accepted")
        if spec.mac and spec.mac != info["mac"]:
            self.fail(f"the sheet says MAC {spec.mac} but the board on this port is {info['mac']}")
        mac_bytes = bytes.fromhex(info["mac"].replace(":", ""))

        self.enter("check")
        root_candidates = list(ROOT_FILES) + [p + ".new" for p in ROOT_FILES] + ["/active"]
        found, _dirs = board.hash_files(dirs=["/a", "/b"], files=root_candidates, what="reading the board's files")
        pointer = parse_pointer(board.read_file("/active", "reading the slot pointer")) if "/active" in found else None
        old_cfg = board.read_file("/config.cbor", "reading the config") if "/config.cbor" in found else None
        ident = config_identity(old_cfg)
        if old_cfg is not None and not o.replace:
            if ident is None:
                self.fail("the board holds a config.cbor that is not a Red Mesh config (another application?); "
                          "refusing to overwrite it: pass --replace to provision it anyway")
            net_id, pub, old_node = ident
            if net_id != self.fleet.net_id or pub != self.fleet.fleet_pub:
                self.fail(f"the board belongs to another fleet or network (its net id {net_id}, fleet key "
                          f"{pub.hex()[:16]}..., ours {self.fleet.net_id}, {self.fleet.fleet_pub.hex()[:16]}...); "
                          f"refusing: pass --replace to take it into this fleet")
            if old_node != spec.node_id:
                self.fail(f"the board is already node {old_node} of this fleet; run again with --node-id "
                          f"{old_node} to re-provision it, or --replace to make it node {spec.node_id}")
        elif old_cfg is not None and ident is not None and ident[2] != spec.node_id:
            self.res["notes"].append(f"replaced the config of node {ident[2]}")
        if old_cfg is None and not o.replace and "/main.py" in found:
            # a stock MicroPython board has a boot.py but no main.py: a main.py that is not ours,
            # with no Red Mesh config beside it, is another application's
            ours_main = hashlib.sha256(bundle.root_main_py).hexdigest()
            if found["/main.py"][1] != ours_main:
                self.fail("the board runs another application (a /main.py that is not Red Mesh's, and no "
                          "Red Mesh config); refusing to overwrite it: pass --replace to provision it anyway")
        if info["virtual"] and o.sim_medium_port is None and o.selftest:
            # its firmware would sit in its safe state and the self-test could never pass
            self.fail("a virtual board's firmware talks to the virtual rig's radio medium, and none was given: "
                      "pass --sim-medium-port PORT (the medium of a running `fleet sim up`), or --no-selftest "
                      "to only write the board")
        self._check_store(info["mac"])
        ours = ident is not None and ident[0] == self.fleet.net_id and ident[1] == self.fleet.fleet_pub
        config = self.fleet.config_bytes(spec, mac_bytes, decode_config(old_cfg) if ours else None)

        # the plan
        want_root = {"/boot.py": bundle.boot_py, "/main.py": bundle.root_main_py, "/config.cbor": config}

        rom_image = self._rom_image(info, pointer)
        plan = plan_copy(found, pointer, bundle, want_root, rom_image)
        target, to_write, stale, staged, renames = plan.target, plan.to_write, plan.stale, plan.staged, plan.renames
        new_pointer, pointer_changes, need = plan.new_pointer, plan.pointer_changes, plan.need_bytes
        self.res["slot"] = target
        self.res["slot_storage"] = "romfs" if rom_image is not None else "files"
        prefix = f"/{target}/"
        self.res["files_skipped"] = plan.skipped
        self.res["files_removed"] = len(stale)
        self.res["files_written"] = len(to_write) + len(staged) + (len(bundle.files) if plan.rom_image else 0)
        free = info["free_flash_bytes"] or 0
        if need and free >= 0 and need + 16384 > free:
            self.fail(f"not enough free flash: the app needs about {need // 1024} KB, the board has "
                      f"{free // 1024} KB free; remove old files from the board (or erase it) and re-run")

        self.enter("copy")
        total = sum(len(d) for d in to_write.values()) + sum(len(d) for d in staged.values()) + len(plan.rom_image or b"")
        done = 0

        def on_bytes(n):
            nonlocal done
            done += n
            self.res["bytes_written"] = done
            self.progress(done, total)

        self.progress(0, total)
        if plan.rom_image is not None:
            # the app into the target's romfs partition (never the running slot's: that one is
            # mounted), where its bytecode runs in place; the slot's directory is emptied below
            board.write_rom(SLOTS.index(target), plan.rom_image, o.chunk_bytes, on_bytes, "copying the app")
        elif (to_write or stale) and info["romfs_partitions"] >= 2:
            # the slot's romfs partition may hold an image an OTA update staged there: erase its
            # first sector, or firmware/boot.py would run that image instead of the directory
            # written now (the target is never the running slot, so never the mounted partition)
            board.exec(f"import vfs\nvfs.rom_ioctl(3,{SLOTS.index(target)},4096)\n",
                       "erasing the slot's romfs partition")
        board.remove_files(stale)
        dirs = set()
        for path in to_write:
            parts = path.split("/")[1:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/" + "/".join(parts[:i]))
        board.make_dirs(sorted(dirs, key=lambda d: (d.count("/"), d)))
        board.write_files(to_write, o.chunk_bytes, on_bytes, "copying the app")
        board.write_files(staged, o.chunk_bytes, on_bytes, "writing the config and boot files")

        self.enter("verify")
        if plan.rom_image is not None:
            got = board.rom_sha256(SLOTS.index(target), len(plan.rom_image))
            if got != hashlib.sha256(plan.rom_image).hexdigest():
                self.fail(f"verification failed: romfs partition {SLOTS.index(target)} (slot {target}) differs from "
                          f"the image sent; the flash may be faulty. Nothing was switched: run the command again")
        if to_write or staged or stale or plan.rom_image is not None:
            found2, _ = board.hash_files(dirs=[f"/{target}"], files=[n for n, _ in renames],
                                         what="verifying the files")
            for rel in () if plan.rom_image is not None else bundle.files:
                got = found2.get(prefix + rel)
                if got is None or got[1] != bundle.digests[rel]:
                    self.fail(f"verification failed: {prefix + rel} on the board "
                              f"{'is missing' if got is None else 'differs from what was sent'}; the flash may be "
                              f"faulty. Nothing was switched: run the command again")
            extra = [p for p in found2 if p.startswith(prefix) and p[len(prefix):] not in bundle.files]
            if extra:
                self.fail(f"the target slot still holds unexpected files ({', '.join(extra[:3])}); run again")
            for new, path in renames:
                got = found2.get(new)
                if got is None or got[1] != hashlib.sha256(want_root[path]).hexdigest():
                    self.fail(f"verification failed for {path}: nothing was switched; run the command again")

        self.enter("commit")
        if renames or pointer_changes:
            code = ["import os"]
            for new, path in renames:
                code.append(f"os.rename({new!r},{path!r})")
            if pointer_changes:
                b64 = base64.b64encode(new_pointer.encode()).decode()
                code += ["from binascii import a2b_base64 as _d",
                         f"f=open('/active.tmp','wb');f.write(_d(b'{b64}'));f.close()",
                         "os.rename('/active.tmp','/active')"]
                self.res["bytes_written"] += len(new_pointer)
                self.res["files_written"] += 1
            self.res["board_state"] = "unknown: the commit was interrupted, re-run to finish"
            board.exec("\n".join(code) + "\n", "switching to the new app (commit)")
        self.res["board_state"] = "provisioned"
        self.res["usb_s"] = round(time.monotonic() - self.t0, 3)
        self.res["estimate_s"] = {
            str(b): round(estimate_usb_seconds(board.bytes_out, board.bytes_in, board.execs,
                                               self.res["bytes_written"], b), 1)
            for b in ESTIMATE_BAUDS
        }

        self.enter("reset")
        t_reset = time.monotonic()
        board.hard_reset()
        if o.selftest:
            self.enter("selftest")
            self.res["selftest"] = self._wait_selftest(board)
        else:
            self.res["selftest"] = "skipped"
        self.res["selftest_s"] = round(time.monotonic() - t_reset, 3)

        self.enter("register")
        with self.fleet.store_lock:
            store = self.fleet.home.store(create=True)
            try:
                store.register_node(spec.node_id, mac=info["mac"], role=spec.role, pole=spec.pole, lat=spec.lat,
                                    lon=spec.lon, fw_version=bundle.version, fw_seq=bundle.seq,
                                    registered_at=int(time.time()))
                store.record_event(int(time.time()), "provisioned", node=spec.node_id,
                                   detail=f"mac={info['mac']} port={spec.port} slot={target} fw={bundle.version}")
            finally:
                store.close()

    def _rom_image(self, info, pointer):
        """The app as a ROMFS image when the board has the two romfs partitions of the node's
        hardware spec and the image fits the slot's (else None: the slot is written as files,
        which cost the board heap: their bytecode is loaded into RAM)."""
        if info["romfs_partitions"] < 2:
            return None
        img = _rom_image_of(self.bundle)
        sizes = info["romfs_bytes"]
        if len(sizes) < 2 or len(img) > min(sizes[:2]):
            self.res["notes"].append(f"the app ({len(img) // 1024} KB as a ROMFS image) does not fit the board's "
                                     f"romfs partitions ({', '.join(str(z // 1024) for z in sizes)} KB): written as "
                                     f"files, which cost heap (README, Firmware in ROMFS)")
            return None
        return img

    def _check_store(self, mac):
        spec = self.spec
        with self.fleet.store_lock:
            if not os.path.exists(self.fleet.home.store_path):
                return
            store = self.fleet.home.store()
            try:
                reg = store.node(spec.node_id)
                others = [n["node"] for n in store.nodes()
                          if norm_mac(n["mac"]) == norm_mac(mac) and n["node"] != spec.node_id]
            finally:
                store.close()
        if reg is not None and reg["mac"] and norm_mac(reg["mac"]) != norm_mac(mac):
            if not self.o.replace:
                self.fail(f"node id {spec.node_id} is already registered to another board (MAC {reg['mac']}); "
                          f"refusing: choose another --node-id, or pass --replace if that board is gone")
            self.res["notes"].append(f"node {spec.node_id} moved from MAC {reg['mac']}")
        if others:
            self.res["notes"].append(f"this MAC was registered as node {', '.join(map(str, others))}")

    def _wait_selftest(self, board):
        spec = self.spec
        timeout_s = self.o.selftest_timeout_s or (self.fleet.warmup_s() + 60)
        tail, started, exc_line, crashed = [], False, None, False
        for line in board.console_lines(timeout_s):
            line = devstrings.expand(scrub(line, self.secrets))  # coded messages as text
            tail = (tail + [line])[-12:]
            if line.startswith("node start"):
                started = True
            elif line.startswith("selftest"):
                fields = dict(w.split("=", 1) for w in line.split()[2:] if "=" in w)
                if line.split()[1:2] == ["ok"]:
                    if fields.get("node") != str(spec.node_id):
                        self.fail(f"the board reports node {fields.get('node')} in its self-test, expected "
                                  f"{spec.node_id}; run the command again")
                    return line
                missing = [k for k in ("sensor", "radio", "config") if fields.get(k) == "0"]
                self.fail(f"the self-test failed ({', '.join(missing) or line}): "
                          f"{'check the sensor cable; ' if 'sensor' in missing else ''}the board is provisioned, "
                          f"fix the cause and run the command again")
            elif line.startswith("safe-state"):
                why = line[len("safe-state"):].strip()
                if why.startswith("crash"):
                    self.fail(f"the app is not running: it crash-loops and the node went to its safe state ({why}); see "
                              f"`fleet node logs --port {spec.port} --crash-log`. The board is provisioned; fix the "
                              f"firmware and run the command again")
                self.fail(f"the node rejected its config: {why}")
            elif line.startswith("crash #"):
                crashed = True
            elif line.strip() and not line.startswith(" ") and ("Error" in line or "Exception" in line):
                exc_line = line.strip()
                if crashed:  # firmware/boot.py logged a crash and resets the board: no need to wait
                    self.fail(f"the app is not running: it crashed after the reset ({exc_line}) and the board reset "
                              f"itself; see `fleet node logs --port {spec.port} --crash-log`. The board is provisioned; "
                              f"fix the firmware and run the command again")
            elif 'Type "help()" for more information.' in line:
                self.fail(f"the app is not running after the reset (it stopped with: {exc_line or 'no error shown'}); "
                          f"see `fleet node logs --port {spec.port}`. The board is provisioned; fix the firmware "
                          f"and run the command again")
        what = ("the node started (config accepted) but did not confirm its sensor and radio" if started
                else "the node never reported its start (no 'node start' line)")
        last = " | ".join(t for t in tail if t.strip())[-300:] or "nothing"
        self.fail(f"no self-test report within {timeout_s:g} s: {what}. Last console lines: {last}. Check the "
                  f"sensor cable, then run the command again (or --no-selftest to skip the check)")


# ---- many boards ------------------------------------------------------------------------------


def locate_by_mac(specs, candidate_ports, baud=DEFAULT_BAUD, board_factory=MpBoard, connect_timeout_s=10.0):
    """Fill in the port of every spec given by MAC, by detecting the boards on `candidate_ports`
    (in parallel). Returns (specs with a port, specs whose board was not found)."""
    wanted = [s for s in specs if s.port is None]
    if not wanted:
        return list(specs), []
    used = {s.port for s in specs if s.port}
    ports = [p for p in candidate_ports if p not in used]

    def probe(port):
        try:
            with board_factory(port, baud=baud) as b:
                b.enter_raw(soft_reset=False, timeout_s=connect_timeout_s)
                mac = detect(b)["mac"]
                b.soft_reset_to_app()
                return port, mac
        except FleetError:
            return port, None

    by_mac = {}
    if ports:
        with ThreadPoolExecutor(max_workers=len(ports)) as ex:
            for port, mac in ex.map(probe, ports):
                if mac:
                    by_mac[mac] = port
    found, missing = [s for s in specs if s.port], []
    for s in wanted:
        if s.mac in by_mac:
            s.port = by_mac[s.mac]
            found.append(s)
        else:
            missing.append(s)
    return found, missing


def provision(home, specs, options=None, *, on_progress=None, board_factory=MpBoard, bundle=None, cancel=None):
    """Provision every board of `specs` (NodeSpec with a port) in parallel, one thread per port.

    Returns {"results": [per-board dict], "ok": n, "failed": n, "fw_version", "bundle_bytes"}; a
    board's failure is in its result (ok False, step, error, board_state), never raised. Raises
    FleetError before touching any board when the request itself is wrong (duplicate ports or
    node ids, no fleet keys, an invalid config). `cancel` (a threading.Event; Ctrl-C sets it too)
    stops every board at its next chunk before its commit."""
    options = options or ProvisionOptions()
    if not specs:
        raise FleetError("nothing to provision: give --port (and --node-id), or --from-csv FILE")
    for key in ("port", "node_id"):
        seen = {}
        for s in specs:
            v = getattr(s, key)
            if v in seen:
                raise FleetError(f"{key.replace('_', ' ')} {v} appears twice ({seen[v]} and {s.where()}): "
                                 f"each board needs its own port and node id")
            seen[v] = s.where()
    for s in specs:
        if not s.port:
            raise FleetError(f"{s.where()}: no port for MAC {s.mac}")
        if s.role not in ROLES:
            raise FleetError(f"{s.where()}: role must be node or gateway, got {s.role!r}")
        if s.sensor not in SENSORS:
            raise FleetError(f"{s.where()}: sensor must be one of {', '.join(SENSORS)}, got {s.sensor!r}")
    fleet = _Fleet(home, options)
    for s in specs:  # a bad config is refused before any board is touched
        fleet.config_bytes(s, b"\x02\x00\x00\x00\x00\x01")
    bundle = bundle or build_bundle(options.arch)
    if options.extra_files:
        bundle = with_extra_files(bundle, options.extra_files)
    secrets = fleet.secrets([s.node_id for s in specs])
    cancel = cancel or threading.Event()
    runs = [_Run(fleet, bundle, s, options, on_progress, board_factory, secrets, cancel) for s in specs]
    interrupted = False
    with ThreadPoolExecutor(max_workers=len(runs)) as ex:
        futures = [ex.submit(r.run) for r in runs]
        try:
            results = [f.result() for f in futures]
        except KeyboardInterrupt:
            # every board stops at its next chunk (before its commit) or finishes its commit
            interrupted = True
            cancel.set()
            results = [f.result() for f in futures]
    ok = sum(1 for r in results if r["ok"])
    return {"results": results, "ok": ok, "failed": len(results) - ok, "fw_version": bundle.version,
            "fw_seq": bundle.seq, "bundle_bytes": bundle.size_bytes, "bundle_files": len(bundle.files),
            "interrupted": interrupted}
