"""The technician's sheet: a CSV of boards to provision (port or MAC, node id, pole, lat/lon,
role, sensor), checked row by row; each problem reported with its row."""
import csv
import re

from fleet.errors import FleetError
from fleet.provision.model import ROLES, SENSORS, NodeSpec
from protocol import text as text_grammar

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
