"""USB provisioning of nodes: detect the board, copy the app, write the config, verify, commit,
reset, wait for the self-test, register. Plain data in and out; the CLI (fleet/cli/provision.py,
fleet/cli/node.py) only renders. The board is driven through fleet.mpboard (mpremote).

Theory of operation
-------------------
Flash layout (firmware/boot.py): app slots /a and /b (main.py, firmware/*.mpy, protocol/*.mpy),
the pointer /active ("key=value" lines naming the slot to run, replaced only by rename),
/boot.py (selects the slot), /main.py (`import main`: the active slot's main.py), /config.cbor.

Steps, per board (the step names appear in errors and in the JSON summary):
  connect   open the port (mpremote SerialTransport);
  detect    Ctrl-C the app, raw REPL, soft reset; MicroPython version, sys.platform, unique id
            (the ESP32's base MAC = its ESP-NOW address), free flash, machine.VIRTUAL_BOARD.
            Refuses anything but MicroPython on an ESP32, except a virtual board;
  check     SHA-256 of every file of both slots and of the root files, computed on the board;
            the current pointer and config. Refuses a config of another fleet (net id / fleet
            public key) or a board that is already another node id of this fleet, and a node id
            registered in the store to another MAC -- unless --replace. Plans the copy: the
            target slot is the active slot if it already holds exactly this build, else the
            inactive one (slot a on a board without a pointer): the running app is never
            written to. Files already identical are skipped;
  copy      stale files of the target slot removed; missing/different files written (base64,
            several per exec); /boot.py, /main.py and /config.cbor staged as `<name>.new`;
  verify    every file of the target slot and every staged file hashed ON the board and
            compared with the local SHA-256;
  commit    one exec: rename the staged root files into place, then write the pointer (write
            /active.tmp, rename it over /active) -- LAST;
  reset     machine.reset();
  selftest  read the serial console until `selftest ok node=N ...` (sensor frames seen, radio
            up, config accepted) or a clear failure (safe-state line, app exited, timeout);
  register  the node in the fleet store (MAC, pole, lat/lon, role, firmware version): `fleet
            status` lists it at once as never heard.

"Untouched or fully provisioned": everything before `commit` writes only to the inactive slot
and to `.new` files, which nothing boots, so a failure (or an unplugged cable) before the commit
leaves a board that boots exactly what it booted before -- or, on a blank board, nothing but the
REPL. The commit is a handful of renames in a single exec (milliseconds), each atomic on
littlefs; the pointer rename is the last, so a power cut inside that window can at worst leave
the new root files with the previous slot (the previous app with the new config). A re-run of
the same command completes any of these states: it skips what is already identical, so a repair
after an interrupted copy writes only what is missing. Re-running on a provisioned board writes
nothing at all (it still resets, waits for the self-test and refreshes the registration).

Secrets (node key, mesh key, Wi-Fi password) go only into config.cbor over the serial line;
they never appear in results, errors or console excerpts (console lines are redacted).
"""
import base64
import csv
import hashlib
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import firmware
from fleet.errors import FleetError
from fleet.mpboard import DEFAULT_BAUD, MpBoard, MpBoardError
from protocol import text as text_grammar

SLOTS = ("a", "b")
ROLES = ("node", "gateway")
SENSORS = ("pms5003", "pms5003t", "sds011")
DEFAULT_ARCH = "xtensawin"  # ESP32; no file uses @native, so the bytes are the same for any arch
ROOT_FILES = ("/boot.py", "/main.py", "/config.cbor")
STEPS = ("connect", "detect", "check", "copy", "verify", "commit", "reset", "selftest", "register")
_BEFORE_COMMIT = ("connect", "detect", "check", "copy", "verify")

# ---- time estimates for a real ESP32 ---------------------------------------------------------
# wire time: every byte both ways at 10 bits (8N1) per byte -- but host-to-board bytes of a
#   raw-paste exec are flow-controlled: stock MicroPython grants 128-byte windows, at most two in
#   flight, each granted back over the USB-UART bridge (round trip ~4 ms on a CP210x/CH340 with
#   1 ms USB frames; an FTDI at its default 16 ms latency timer is four times worse), so upload
#   runs at most 256 bytes per round trip (~64 KB/s): irrelevant at 115200 baud, the limit at
#   921600;
# per exec: raw-paste handshake, compile of a ~5 KB exec on a 160 MHz ESP32, the end-of-exec
#   round trips -- 15 ms;
# flash: littlefs on the ESP32's SPI NOR flash erases 4 KB sectors (~45 ms each) and programs
#   pages: ~64 KB/s effective;
# resets: the soft reset at connect (~1 s) and the hard reset before the self-test (~2 s: ROM,
#   bootloader, MicroPython start). The self-test wait itself (sensor warm-up, >= 30 s) is the
#   same on both and is reported separately.
# Note: MicroPython's ESP32 REPL UART runs at 115200; 921600 needs a build (or a boot.py) that
# sets the REPL UART faster -- `--baud` then matches it.
EST_EXEC_OVERHEAD_S = 0.015
EST_USB_RTT_S = 0.004
EST_PASTE_BYTES_IN_FLIGHT = 256
EST_FLASH_BYTES_PER_S = 64 * 1024
EST_SOFT_RESET_S = 1.0
EST_HARD_RESET_S = 2.0
ESTIMATE_BAUDS = (115200, 921600)


class ProvisionError(FleetError):
    """Provisioning of one board failed at `step`; the message says what to do next."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


@dataclass
class NodeSpec:
    """One board to provision. `port` or `mac` locates it; `row` is its CSV line, if any."""

    node_id: int
    port: str | None = None
    mac: str | None = None
    role: str = "node"
    pole: str | None = None
    lat: float | None = None
    lon: float | None = None
    sensor: str = "pms5003"
    sim_port: int | None = None
    row: int | None = None

    def where(self):
        return f"row {self.row}" if self.row is not None else (self.port or self.mac or f"node {self.node_id}")


@dataclass
class ProvisionOptions:
    """Settings shared by every board of a run (None: the config default / fleet.toml)."""

    replace: bool = False
    selftest: bool = True
    selftest_timeout_s: float | None = None  # None: warmup_s + 60 s
    report_interval_s: int | None = None
    warmup_s: int | None = None
    sample_window_s: int | None = None
    continuous: bool | None = None
    radio_channel: int | None = None
    broker_url: str | None = None  # gateways; None: fleet.toml [broker] url
    wifi_ssid: str | None = None  # gateways; None: fleet.toml [uplink] wifi_ssid
    wifi_password: str | None = None  # gateways; None: fleet.toml [uplink] wifi_password
    sim_medium_port: int | None = None  # virtual boards: add the `sim` section
    baud: int = DEFAULT_BAUD
    arch: str = DEFAULT_ARCH
    chunk_bytes: int = 4096
    connect_timeout_s: float = 15.0
    extra_files: dict = field(default_factory=dict)  # slot path -> bytes, replacing build files (tests)


# ---- the app bundle ---------------------------------------------------------------------------


def firmware_version():
    """Return (version, seq) of the firmware in this tree (FW_VERSION / FW_SEQ of firmware/node.py)."""
    src = os.path.join(os.path.dirname(firmware.__file__), "node.py")
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return "unknown", 0
    v = re.search(r'^FW_VERSION\s*=\s*"([^"]+)"', text, re.M)
    s = re.search(r"^FW_SEQ\s*=\s*(\d+)", text, re.M)
    return (v.group(1) if v else "unknown"), (int(s.group(1)) if s else 0)


class Bundle:
    """The app as it goes into a slot: {slot-relative path: bytes}, plus /boot.py and /main.py."""

    def __init__(self, files, version, seq, arch, boot_py, root_main_py):
        self.files = files
        self.version = version
        self.seq = seq
        self.arch = arch
        self.boot_py = boot_py
        self.root_main_py = root_main_py
        self.digests = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}

    @property
    def size_bytes(self):
        return sum(len(b) for b in self.files.values())


_bundle_cache = {}
_bundle_lock = threading.Lock()


def _device_sources():
    from fleet import ota_bundle

    root = ota_bundle.source_root()
    return root, [(rel, os.path.join(root, rel)) for rel in ota_bundle.device_sources(root)]


def build_bundle(arch=DEFAULT_ARCH):
    """Compile firmware/ and protocol/ with mpy-cross, exactly as `fleet ota build` does (same
    files, same slot main.py: a slot provisioned over USB equals one installed by OTA); cached per
    process while the sources do not change. Returns a Bundle; raises FleetError naming a file
    that does not compile."""
    from fleet import ota_bundle

    root, sources = _device_sources()
    key = (arch, tuple((rel, os.stat(full).st_mtime_ns, os.stat(full).st_size) for rel, full in sources))
    with _bundle_lock:
        cached = _bundle_cache.get(key)
        if cached is not None:
            return cached
        files = dict(ota_bundle.compile_app(root, arch))
        from firmware import crash as fw_crash

        boot_py = fw_crash.root_boot_py(os.path.join(root, "firmware")).encode()

        version, seq = firmware_version()
        bundle = Bundle(files, version, seq, arch, boot_py, fw_crash.ROOT_MAIN_PY.encode())
        _bundle_cache.clear()
        _bundle_cache[key] = bundle
        return bundle


def with_extra_files(bundle, extra):
    """Return a copy of `bundle` with slot files replaced/added from {path: bytes} (tests, tools)."""
    files = dict(bundle.files)
    files.update(extra)
    return Bundle(files, bundle.version, bundle.seq, bundle.arch, bundle.boot_py, bundle.root_main_py)


# ---- the technician's sheet -------------------------------------------------------------------

_SHEET_COLUMNS = ("port", "mac", "node_id", "pole", "lat", "lon", "role", "sensor")


def _parse_mac(text):
    t = text.replace(":", "").replace("-", "").strip().lower()
    if len(t) != 12 or any(c not in "0123456789abcdef" for c in t):
        raise ValueError(f"MAC {text!r} is not 12 hex digits (e.g. 24:6f:28:aa:bb:cc)")
    return ":".join(t[i:i + 2] for i in range(0, 12, 2))


MAX_ROW_ERRORS = 20  # a sheet of 10,000 bad rows is reported in a screenful
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def _shown(text, limit=40):
    """A cell as shown in an error: repr (escapes control characters), cut to `limit`."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def pole_problem(pole):
    """None when `pole` is a pole id (a token of protocol/text.py, at most 32 characters), else
    the reason."""
    return text_grammar.token_problem(pole, text_grammar.POLE_MAX)


def read_sheet(path, default_role="node", default_sensor="pms5003"):
    """Read a technician's CSV sheet: a header row with port or mac, node_id, and optionally pole,
    lat, lon, role, sensor (blank or absent: the defaults given). Every row is checked; returns
    [NodeSpec] or raises FleetError listing every bad row by its line number."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise FleetError(f"{path}: the sheet is empty; the first row must name the columns "
                                 f"(port or mac, node_id, pole, lat, lon, role)")
            header = [(h or "").strip().lower() for h in reader.fieldnames]
            unknown = [h for h in header if h not in _SHEET_COLUMNS]
            if unknown:
                raise FleetError(f"{path}: unknown column(s) {', '.join(repr(h) for h in unknown)} in the header; "
                                 f"known: {', '.join(_SHEET_COLUMNS)}")
            if "node_id" not in header or ("port" not in header and "mac" not in header):
                raise FleetError(f"{path}: the header needs node_id and a port or mac column, got {', '.join(header)}")
            rows = []
            for raw in reader:
                rows.append((reader.line_num, {(k or "").strip().lower(): (v or "").strip()
                                               for k, v in raw.items() if k is not None}))
    except OSError as e:
        raise FleetError(f"cannot read the sheet {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise FleetError(f"{path}: not UTF-8 text (byte {e.start} of the file); save the sheet as CSV UTF-8") from None
    except csv.Error as e:
        raise FleetError(f"{path}: not a valid CSV file ({e})") from e
    specs, errors = [], []
    seen = {}
    for line, r in rows:
        if not any(r.values()):
            continue  # a blank line
        problems = []
        port, mac = r.get("port") or None, r.get("mac") or None
        if bool(port) == bool(mac):
            problems.append("give exactly one of port and mac")
        if mac:
            try:
                mac = _parse_mac(mac)
            except ValueError as e:
                problems.append(str(e))
        node_id = None
        text = r.get("node_id", "")
        if not re.fullmatch(r"[0-9]{1,10}", text):  # int() would take '1_000', ' 7', '+7', '٧'
            problems.append(f"node_id {_shown(text)} is not an integer 1..4294967295 (digits only)")
        else:
            node_id = int(text)
            if not 1 <= node_id <= 0xFFFFFFFF:
                problems.append(f"node_id {node_id} is out of range 1..4294967295")
                node_id = None
        lat = lon = None
        for name, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
            text = r.get(name, "")
            if not text:
                continue
            try:
                if not _DECIMAL.fullmatch(text):
                    raise ValueError
                v = float(text)
                if not lo <= v <= hi:
                    raise ValueError
            except ValueError:
                problems.append(f"{name} {_shown(text)} is not a number in {lo:g}..{hi:g}")
                continue
            if name == "lat":
                lat = v
            else:
                lon = v
        role = r.get("role") or default_role
        if role not in ROLES:
            problems.append(f"role {role!r} must be node or gateway")
        sensor = r.get("sensor") or default_sensor
        if sensor not in SENSORS:
            problems.append(f"sensor {sensor!r} must be one of {', '.join(SENSORS)}")
        for key, value in (("port", port), ("mac", mac), ("node_id", node_id)):
            if value is None:
                continue
            if (key, value) in seen:
                problems.append(f"{key} {value} is also on row {seen[(key, value)]}")
            else:
                seen[(key, value)] = line
        pole = r.get("pole") or None
        if pole is not None and pole_problem(pole):
            problems.append(f"pole {_shown(pole)}: {pole_problem(pole)}")
        if problems:
            errors.append(f"row {line}: " + "; ".join(problems))
            continue
        specs.append(NodeSpec(node_id=node_id, port=port, mac=mac, role=role, pole=pole,
                              lat=lat, lon=lon, sensor=sensor, row=line))
    if errors:
        shown = errors[:MAX_ROW_ERRORS]
        more = f"\n  ... and {len(errors) - len(shown)} more bad row(s)" if len(errors) > len(shown) else ""
        raise FleetError(f"{path}: {len(errors)} bad row(s), nothing was provisioned:\n  " + "\n  ".join(shown) + more)
    if not specs:
        raise FleetError(f"{path}: no rows to provision")
    return specs


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
        self.mesh_key = keys.mesh_key()
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


# ---- one board --------------------------------------------------------------------------------


_DETECT_CODE = (
    "import sys,os\n"
    "try:\n"
    " import machine\n"
    " _u=machine.unique_id();_v=getattr(machine,'VIRTUAL_BOARD',False)\n"
    "except Exception:\n"
    " _u=b'';_v=False\n"
    "try:\n"
    " _s=os.statvfs('/');_f=_s[0]*_s[4];_t=_s[0]*_s[2]\n"
    "except Exception:\n"
    " _f=_t=-1\n"
    "print(repr({'impl':sys.implementation.name,'version':'.'.join(str(x) for x in sys.implementation.version[:3]),"
    "'platform':sys.platform,'machine':getattr(sys.implementation,'_machine',''),'uid':bytes(_u),"
    "'virtual':bool(_v),'free':_f,'total':_t}))\n"
)


def detect(board):
    """Identify the board (raw REPL must be entered); return plain data: micropython version,
    platform, machine, mac (aa:bb:..), virtual, free/total flash bytes, supported + reason."""
    import ast

    out = board.exec(_DETECT_CODE, "detecting the board").decode("utf-8", "replace").strip()
    try:
        d = ast.literal_eval(out.splitlines()[-1])
    except (ValueError, SyntaxError, IndexError) as e:
        raise ProvisionError(f"{board.port}: unexpected answer while detecting the board: {out[:80]!r}",
                             "detect") from e
    uid = d.get("uid") or b""
    info = {
        "implementation": d.get("impl"), "micropython": d.get("version"), "platform": d.get("platform"),
        "machine": d.get("machine"), "mac": mac_str(uid[:6]) if len(uid) >= 6 else None,
        "virtual": bool(d.get("virtual")), "free_flash_bytes": d.get("free"), "total_flash_bytes": d.get("total"),
    }
    if info["implementation"] != "micropython":
        info["supported"], info["reason"] = False, f"it runs {info['implementation']}, not MicroPython"
    elif info["virtual"]:
        info["supported"], info["reason"] = True, "virtual board accepted"
    elif info["platform"] != "esp32":
        info["supported"], info["reason"] = False, f"it is a {info['platform']} board ({info['machine']}), not an ESP32"
    elif info["mac"] is None:
        info["supported"], info["reason"] = False, "it reports no unique id (MAC)"
    else:
        info["supported"], info["reason"] = True, f"ESP32 ({info['machine']})"
    return info


def _parse_pointer(data):
    from firmware import boot as fw_boot

    if data is None:
        return None
    try:
        p = fw_boot.parse_kv(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if p.get("slot") not in SLOTS or "bseq" not in p:
        return None
    return p


def _decode_config(data):
    """The config map in bytes `data` (leniently: any CBOR map), or None."""
    if data is None:
        return None
    import cbor2

    try:
        d = cbor2.loads(data)
    except Exception:  # noqa: BLE001 - any garbage means "not a Red Mesh config"
        return None
    return d if isinstance(d, dict) else None


def _config_identity(data):
    """(net_id, fleet_pub, node_id) of config bytes, or None if they are not a Red Mesh config."""
    d = _decode_config(data)
    if d is None or not isinstance(d.get("fleet_pub"), bytes):
        return None
    return d.get("net_id"), d.get("fleet_pub"), d.get("node_id")


def mac_str(mac):
    """'aa:bb:cc:dd:ee:ff' of 6 MAC bytes (as fleet.sim.topology prints them)."""
    return ":".join("%02x" % b for b in mac)


def _norm_mac(mac):
    # the store holds MACs as written by whoever registered them ("aa:bb:.." here, plain hex elsewhere)
    return (mac or "").replace(":", "").replace("-", "").lower()


def _scrub(text, secrets):
    for s in secrets:
        text = text.replace(s, "<redacted>")
    return text


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
            self.res["error"] = _scrub(e.message, self.secrets)
            self.res["step"] = getattr(e, "step", None) or self.step
        except Exception as e:  # noqa: BLE001 - one board's bug must not hide the others' results
            self.res["error"] = _scrub(f"{self.spec.port}: internal error at step {self.step}: "
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
        pointer = _parse_pointer(board.read_file("/active", "reading the slot pointer")) if "/active" in found else None
        old_cfg = board.read_file("/config.cbor", "reading the config") if "/config.cbor" in found else None
        ident = _config_identity(old_cfg)
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
        config = self.fleet.config_bytes(spec, mac_bytes, _decode_config(old_cfg) if ours else None)

        # the plan
        want_root = {"/boot.py": bundle.boot_py, "/main.py": bundle.root_main_py, "/config.cbor": config}

        def slot_matches(s):
            have = {p[len(s) + 2:]: v for p, v in found.items() if p.startswith(f"/{s}/")}
            return set(have) == set(bundle.files) and all(have[p][1] == bundle.digests[p] for p in bundle.files)

        if pointer is None:
            target = "a"
        elif slot_matches(pointer["slot"]):
            target = pointer["slot"]
        else:
            target = "b" if pointer["slot"] == "a" else "a"
        self.res["slot"] = target
        prefix = f"/{target}/"
        to_write, skipped = {}, 0
        for rel, data in bundle.files.items():
            have = found.get(prefix + rel)
            if have is not None and have[1] == bundle.digests[rel]:
                skipped += 1
            else:
                to_write[prefix + rel] = data
        stale = [p for p in found if p.startswith(prefix) and p[len(prefix):] not in bundle.files]
        staged, renames = {}, []
        for path, data in want_root.items():
            digest = hashlib.sha256(data).hexdigest()
            have = found.get(path)
            if have is not None and have[1] == digest:
                skipped += 1
                continue
            new = path + ".new"
            renames.append((new, path))
            have_new = found.get(new)
            if have_new is None or have_new[1] != digest:
                staged[new] = data
        self.res["files_skipped"] = skipped
        self.res["files_removed"] = len(stale)
        self.res["files_written"] = len(to_write) + len(staged)
        from firmware import boot as fw_boot

        failed = pointer.get("failed", 0) if pointer else 0
        new_pointer = fw_boot.format_kv(fw_boot.confirmed_pointer(target, bundle.seq, bundle.version, failed))
        pointer_changes = (pointer is None or fw_boot.format_kv(pointer) != new_pointer
                           or "/active" not in found)
        need = sum(-(-len(d) // 4096) * 4096 for d in list(to_write.values()) + list(staged.values()))
        free = info["free_flash_bytes"] or 0
        if need and free >= 0 and need + 16384 > free:
            self.fail(f"not enough free flash: the app needs about {need // 1024} KB, the board has "
                      f"{free // 1024} KB free; remove old files from the board (or erase it) and re-run")

        self.enter("copy")
        total = sum(len(d) for d in to_write.values()) + sum(len(d) for d in staged.values())
        done = 0

        def on_bytes(n):
            nonlocal done
            done += n
            self.res["bytes_written"] = done
            self.progress(done, total)

        self.progress(0, total)
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
        if to_write or staged or stale:
            found2, _ = board.hash_files(dirs=[f"/{target}"], files=[n for n, _ in renames],
                                         what="verifying the files")
            for rel in bundle.files:
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

    def _check_store(self, mac):
        spec = self.spec
        with self.fleet.store_lock:
            if not os.path.exists(self.fleet.home.store_path):
                return
            store = self.fleet.home.store()
            try:
                reg = store.node(spec.node_id)
                others = [n["node"] for n in store.nodes()
                          if _norm_mac(n["mac"]) == _norm_mac(mac) and n["node"] != spec.node_id]
            finally:
                store.close()
        if reg is not None and reg["mac"] and _norm_mac(reg["mac"]) != _norm_mac(mac):
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
            line = _scrub(line, self.secrets)
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


def estimate_usb_seconds(bytes_sent, bytes_received, execs, bytes_written, baud):
    """Estimated USB session time on a real ESP32 at `baud` for the traffic measured on a board:
    upload time (line rate, or the raw-paste window limit if slower) + download time + a fixed cost
    per exec + flash programming + the soft and hard resets. The EST_* constants hold the
    assumptions (see the comment above them)."""
    up_s = max(bytes_sent * 10 / baud, bytes_sent * EST_USB_RTT_S / EST_PASTE_BYTES_IN_FLIGHT)
    down_s = bytes_received * 10 / baud
    return (up_s + down_s + execs * EST_EXEC_OVERHEAD_S + bytes_written / EST_FLASH_BYTES_PER_S
            + EST_SOFT_RESET_S + EST_HARD_RESET_S)


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
    pointer = _parse_pointer(pointer_raw)
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
        ident = _config_identity(cfg_raw)
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
    text = _scrub(data.decode("utf-8", "replace"), secrets)
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


__all__ = [
    "Bundle", "MpBoardError", "NodeSpec", "ProvisionError", "ProvisionOptions", "build_bundle", "detect",
    "CRASH_LOG_PATH", "estimate_usb_seconds", "firmware_version", "locate_by_mac", "node_info", "node_logs",
    "node_reset",
    "provision", "read_sheet", "with_extra_files",
]
