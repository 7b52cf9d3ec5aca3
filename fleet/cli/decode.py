"""`fleet decode HEX|-` — decode one Red Mesh frame (or gateway envelope) and print it as JSON."""
import json
import sys

import click

import protocol
from fleet.errors import FleetError
from protocol import view

_KEY_FILE_FORM = 'a JSON object with hex "mesh_key" and/or "node_key", or "fleet_secret" and "net_id"'


def _read_keys(path):
    """Key file: JSON with hex `mesh_key` and/or `node_key` (the format of protocol/vectors),
    or `fleet_secret` + `net_id` to derive both for the frame's origin. Every error names the
    file and what was expected, never a byte of what it holds (it may be a raw key file)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except OSError as e:
        raise FleetError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError quote the content
        raise FleetError(f"key file {path} is not {_KEY_FILE_FORM} (a raw key file such as "
                         f"keys/fleet_signing.key cannot verify frames)") from None
    if not isinstance(data, dict):
        raise FleetError(f"key file {path}: expected a JSON object")
    if "keys" in data and isinstance(data["keys"], dict):
        data = data["keys"]
    out = {}
    for name in ("mesh_key", "node_key", "fleet_secret"):
        if name in data:
            try:
                out[name] = bytes.fromhex(data[name])
            except (TypeError, ValueError):
                raise FleetError(f"key file {path}: {name} must be a hex string") from None
    if "fleet_secret" in out:
        from protocol import auth

        net_id = data.get("net_id", 1)
        if not isinstance(net_id, int) or isinstance(net_id, bool) or not 0 <= net_id <= 0xFFFFFFFF:
            raise FleetError(f"key file {path}: net_id must be an integer 0..4294967295")
        epoch = data.get("epoch", 0)  # the key epoch (fleet keys rotate) the frames were made in
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= 0xFFFFFFFF:
            raise FleetError(f"key file {path}: epoch must be an integer 0..4294967295")
        try:
            from protocol.keywrap import epoch_node_key

            mesh = auth.derive_mesh_key(out["fleet_secret"], net_id, epoch)
            out.setdefault("mesh_key", mesh)
            secret = out["fleet_secret"]
            out.setdefault("node_key",
                           lambda node: epoch_node_key(auth.derive_node_key(secret, net_id, node), epoch, mesh))
        except (ValueError, protocol.ProtocolError):
            raise FleetError(f"key file {path}: fleet_secret is not a valid fleet secret (32 bytes in hex)") from None
    if not out:
        raise FleetError(f"key file {path}: no mesh_key, node_key or fleet_secret in it")
    return out


def parse_hex(text):
    """Return the bytes of hex `text` (no spaces). Raises FleetError saying what is wrong."""
    bad = next((i for i, c in enumerate(text) if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise FleetError(f"input is not hex: character {bad + 1} is {text[bad]!r}, expected 0-9 or a-f")
    if len(text) % 2:
        raise FleetError(f"input is not hex: odd length ({len(text)} digits), each byte is two hex digits")
    if not text:
        raise FleetError("input is empty: give a frame as hex digits, or '-' to read them from stdin")
    return bytes.fromhex(text)


def describe(frame):
    """Return the JSON-ready dict for a decoded frame: `type`, and for mesh frames `origin`
    and `hops`."""
    d = view.to_dict(frame)
    if frame.type in (protocol.T_BEACON, protocol.T_OTA_ADV, protocol.T_OTA_REQ, protocol.T_OTA_DATA):
        d["origin"] = frame.src
        d["hops"] = 0
    elif frame.type == protocol.T_COMMAND:
        d["origin"] = 0  # the fleet
    return d


@click.command("decode")
@click.argument("hex_input", metavar="HEX|-")
@click.option("--key-file", type=click.Path(dir_okay=False), help="JSON with hex mesh_key/node_key (or fleet_secret + net_id [+ epoch]): verify tags.")
@click.option("--compact", is_flag=True, help="One line of JSON.")
def cli(hex_input, key_file, compact):
    """Decode a frame given as hex (or '-' to read hex from stdin) and print it as JSON.

    Exit status 0 when the frame is valid, 1 with a one-line reason on stderr when not."""
    text = sys.stdin.read() if hex_input == "-" else hex_input
    text = "".join(text.split())
    if text.lower().startswith("0x"):
        text = text[2:]
    buf = parse_hex(text)
    keys = _read_keys(key_file) if key_file else {}
    try:
        frame = protocol.decode(buf, keys.get("mesh_key"), keys.get("node_key"))
    except protocol.ProtocolError as e:
        raise FleetError(f"invalid frame: {e}") from e
    bad = None
    if frame.type == protocol.T_ENVELOPE:
        out, bad = describe_envelope(frame, keys)
    else:
        out = describe(frame)
        if keys:
            out["verified"] = checked(frame, keys)
    click.echo(json.dumps(out, indent=None if compact else 2, ensure_ascii=False))
    if bad:
        raise FleetError(f"{bad[0]} of {len(frame.items)} frames in the envelope are invalid (see their "
                         f"\"error\"); the first: {bad[1]}")


def checked(frame, keys):
    """The tags decode() checked for `frame` with `keys`: a list of "hop" (mesh key),
    "e2e" (the origin's node key) and "auth" (a command's HMAC to one node)."""
    t = frame.type
    out = []
    if keys.get("mesh_key") is not None and t not in (protocol.T_ENVELOPE, protocol.T_DOWNLINK):
        out.append("hop")
    if keys.get("node_key") is not None:
        if t in (protocol.T_TELEMETRY, protocol.T_STATUS, protocol.T_REPLY):
            out.append("e2e")
        elif t == protocol.T_COMMAND and frame.target != 0:
            out.append("auth")
    return out


def describe_envelope(env, keys):
    """Return (dict, bad): the envelope with each air frame decoded - with the keys, its tags
    verified (`verified` lists which) - and bad = (count, first reason) of the frames that do
    not decode, or None."""
    out = {"type": "envelope", "gateway": env.gateway, "eseq": env.eseq, "frames": []}
    n_bad, first = 0, None
    for rx_ms, rssi, fb in env.items:
        try:
            f = protocol.decode(fb, keys.get("mesh_key"), keys.get("node_key"))
            d = describe(f)
            if keys:
                d["verified"] = checked(f, keys)
        except protocol.ProtocolError as e:
            d = {"error": str(e), "hex": bytes(fb).hex()}
            n_bad += 1
            first = first or str(e)
        d["rx_ms"] = rx_ms
        d["rssi"] = rssi
        out["frames"].append(d)
    return out, ((n_bad, first) if n_bad else None)
