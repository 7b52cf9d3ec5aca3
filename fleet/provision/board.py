"""What a board holds, read over its USB port: detect (MicroPython, ESP32, MAC, free flash), its
slot pointer and config, and the redaction of secrets from anything shown."""

from fleet.provision.model import SLOTS, ProvisionError

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
    "try:\n"
    " import vfs;_r=vfs.rom_ioctl(1);_z=[len(vfs.rom_ioctl(2,i)) for i in range(_r)]\n"
    "except Exception:\n"
    " _r=0;_z=[]\n"
    "print(repr({'impl':sys.implementation.name,'version':'.'.join(str(x) for x in sys.implementation.version[:3]),"
    "'platform':sys.platform,'machine':getattr(sys.implementation,'_machine',''),'uid':bytes(_u),"
    "'virtual':bool(_v),'free':_f,'total':_t,'romfs':_r,'romfs_bytes':_z}))\n"
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
        # romfs partitions the port maps (vfs.rom_ioctl(1)); with two, firmware/boot.py runs a slot
        # from its partition when that holds an image, else from the slot's directory
        "romfs_partitions": d.get("romfs") if isinstance(d.get("romfs"), int) and d.get("romfs") > 0 else 0,
        "romfs_bytes": [z for z in d.get("romfs_bytes") or () if isinstance(z, int)],
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


def parse_pointer(data):
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


def decode_config(data):
    """The config map in bytes `data` (leniently: any CBOR map), or None."""
    if data is None:
        return None
    import cbor2

    try:
        d = cbor2.loads(data)
    except Exception:  # noqa: BLE001 - any garbage means "not a Red Mesh config"
        return None
    return d if isinstance(d, dict) else None


def config_identity(data):
    """(net_id, fleet_pub, node_id) of config bytes, or None if they are not a Red Mesh config."""
    d = decode_config(data)
    if d is None or not isinstance(d.get("fleet_pub"), bytes):
        return None
    return d.get("net_id"), d.get("fleet_pub"), d.get("node_id")


def mac_str(mac):
    """'aa:bb:cc:dd:ee:ff' of 6 MAC bytes (as fleet.sim.topology prints them)."""
    return ":".join("%02x" % b for b in mac)


def norm_mac(mac):
    # the store holds MACs as written by whoever registered them ("aa:bb:.." here, plain hex elsewhere)
    return (mac or "").replace(":", "").replace("-", "").lower()


def scrub(text, secrets):
    for s in secrets:
        text = text.replace(s, "<redacted>")
    return text
