"""`fleet ota build` / `inspect`, the bundle and archive formats, and refusals of damaged, foreign
and older bundles by the node-side code; the deflate image staged by the real MicroPython."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))

import ota_fixtures as fx  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from mp_support import ROOT, micropython_bin  # noqa: E402

from firmware import crash  # noqa: E402
from firmware.ota import OtaEngine  # noqa: E402
from firmware.slots import SlotError, SlotManager  # noqa: E402
from fleet import ota_bundle, signing  # noqa: E402
from fleet.cli import group  # noqa: E402
from fleet.errors import FleetError  # noqa: E402
from protocol import ProtocolError  # noqa: E402
from protocol import manifest as mf  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fleet home with keys and two bundles built by the CLI (bseq 1 and 2)."""
    home = str(tmp_path_factory.mktemp("home"))
    runner = CliRunner()
    r = runner.invoke(group, ["keys", "init", "--home", home])
    assert r.exit_code == 0, r.output
    r1 = runner.invoke(group, ["ota", "build", "--home", home, "--version", "1.0.0", "--json"])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(group, ["ota", "build", "--home", home, "--version", "2.0.0", "--json"])
    assert r2.exit_code == 0, r2.output
    pub = bytes.fromhex(json.loads(runner.invoke(group, ["keys", "show", "--json", "--home", home]).output)["public_key"])
    return {"home": home, "b1": json.loads(r1.output), "b2": json.loads(r2.output), "pub": pub}


def test_build_writes_a_signed_paged_bundle(built):
    info = built["b2"]
    assert info["bseq"] == 2 and built["b1"]["bseq"] == 1  # previous + 1
    assert info["path"] == os.path.join(built["home"], "ota", "bundle-2.rmota")
    b = ota_bundle.read_bundle(info["path"], built["pub"])  # signature and every page checked
    m = b.manifest
    assert (m.version, m.target_class, m.compression, m.page_size) == ("2.0.0", "esp32", "deflate", 3584)
    assert m.npages == len(b.pages) == info["pages"] and m.image_size == len(b.image)
    paths = [p for p, _, _ in m.files]
    assert "main.py" in paths and "protocol/manifest.mpy" in paths and "firmware/ota.mpy" in paths
    assert not [p for p in paths if p.endswith(".py") and p != "main.py"]
    files = b.files()  # unpack on the host: the archive lists exactly the manifest's files
    assert [(p, len(d)) for p, d in files] == [(p, s) for p, s, _ in m.files]
    assert [fx.sha256(d) for _, d in files] == [h for _, _, h in m.files]
    for path, data in files:
        if path.endswith(".mpy"):
            assert data[:2] == b"M\x06"  # mpy v6 bytecode
    print("\nbundle: %(files)d files, %(app_bytes)d bytes of app -> %(image_bytes)d image (%(compression)s), "
          "%(pages)d pages, manifest %(manifest_bytes)d bytes, bundle file %(bundle_bytes)d bytes" % info)


def test_inspect_shows_the_manifest(built):
    r = CliRunner().invoke(group, ["ota", "inspect", built["b1"]["path"], "--json", "--home", built["home"]])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (info["bseq"], info["version"], info["signature"], info["pages_ok"]) == (1, "1.0.0", "valid", True)
    assert info["manifest"]["files"][0]["path"]
    r = CliRunner().invoke(group, ["ota", "inspect", built["b1"]["path"], "--home", built["home"]])
    assert r.exit_code == 0 and "signature:    valid" in r.output


def test_seq_must_grow(built):
    r = CliRunner().invoke(group, ["ota", "build", "--home", built["home"], "--seq", "2"])
    assert r.exit_code == 1
    assert "--seq 2 is not above the last bundle built here (2)" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash


def test_build_without_keys_says_what_to_do(tmp_path):
    r = CliRunner().invoke(group, ["ota", "build", "--home", str(tmp_path)])
    assert r.exit_code == 1 and "fleet keys init" in r.output


def _tampered(path, tmp_path):
    b = ota_bundle.read_bundle(path)
    page = bytearray(b.pages[1])
    page[17] ^= 0x01
    b.pages[1] = bytes(page)
    out = tmp_path / "tampered.rmota"
    out.write_bytes(b.encode())
    return b, str(out)


def test_a_flipped_byte_is_refused(built, tmp_path):
    b, path = _tampered(built["b2"]["path"], tmp_path)
    with pytest.raises(FleetError, match="page 1 does not match"):
        ota_bundle.read_bundle(path, built["pub"])
    r = CliRunner().invoke(group, ["ota", "inspect", path, "--json", "--home", built["home"]])
    assert json.loads(r.stdout)["pages_ok"] is False  # the report is still printed...
    assert r.exit_code == 1 and "DAMAGED" in r.stderr  # ...and a script gating on the status stops
    r = CliRunner().invoke(group, ["ota", "inspect", path, "--home", built["home"]])
    assert r.exit_code == 1 and "(DAMAGED)" in r.stdout and "do not push it" in r.stderr
    eng = OtaEngine(7, built["pub"], fx_store(), 1, running_bseq=1)
    with pytest.raises(ProtocolError, match="page 1 does not match"):
        eng.offer_bundle(b.signed_manifest, b.pages)
    assert eng.have == eng.mpages + 1  # page 0 kept, nothing after the bad page
    fs = fx.MemFS()
    with pytest.raises(SlotError, match="page 1"):
        SlotManager(fs).stage(b.manifest, b.pages.__getitem__)
    assert "active" not in fs.files  # no switch


def fx_store():
    from firmware.ota_store import PageStore

    return PageStore(fx.MemFS())


def test_a_bundle_signed_by_another_key_is_refused(built, tmp_path):
    other = signing.generate_keypair()[0]
    b = ota_bundle.build_bundle(fx.app_files(5), 5, "5.0.0", lambda m: signing.sign(other, m))
    with pytest.raises(FleetError, match="signature"):
        ota_bundle.decode_bundle(b.encode(), built["pub"])
    path = tmp_path / "foreign.rmota"
    path.write_bytes(b.encode())
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(group, ["ota", "inspect", str(path), "--home", built["home"], *extra])
        assert r.exit_code == 1 and "INVALID" in r.stdout and "INVALID" in r.stderr, r.output
    eng = OtaEngine(7, built["pub"], fx_store(), 1, running_bseq=1)
    with pytest.raises(ProtocolError, match="signature"):
        eng.offer_bundle(b.signed_manifest, b.pages)
    assert eng.m is None


def test_an_older_bundle_is_refused(built):
    b1 = ota_bundle.read_bundle(built["b1"]["path"], built["pub"])
    b2 = ota_bundle.read_bundle(built["b2"]["path"], built["pub"])
    eng = OtaEngine(7, built["pub"], fx_store(), 1, running_bseq=2)
    with pytest.raises(ProtocolError, match="below the running"):
        eng.offer_bundle(b1.signed_manifest, b1.pages)
    eng = OtaEngine(7, built["pub"], fx_store(), 1, running_bseq=0)
    eng.offer_bundle(b2.signed_manifest, b2.pages)
    with pytest.raises(ProtocolError, match="below the stored"):
        eng.offer_manifest(b1.signed_manifest)
    fs = fx.MemFS()
    mgr = SlotManager(fs)
    mgr.stage(b2.manifest, b2.pages.__getitem__)  # first install
    with pytest.raises(SlotError, match="not above"):
        mgr.stage(b1.manifest, b1.pages.__getitem__)
    assert mgr.last_result()["result"] == "refused" and mgr.running() == (2, "2.0.0")


def test_archive_and_fixture_formats_agree():
    files = fx.app_files(4)
    assert ota_bundle.make_archive(files) == fx.make_archive(files)
    assert ota_bundle.parse_archive(fx.make_archive(files)) == files
    for v in (1, 2, 3):
        assert fx.app_pages(v) == fx.paginate(fx.make_archive(fx.app_files(v)))
    with pytest.raises(ValueError):
        ota_bundle.parse_archive(fx.make_archive(files)[:-1])


def test_vectors_are_current():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import gen_ota_vectors

    with open(gen_ota_vectors.OUT) as f:
        assert f.read() == gen_ota_vectors.render(), "run .venv/bin/python tests/gen_ota_vectors.py"


def test_manifest_size_limits():
    big = [("firmware/f%03d.mpy" % i, b"x") for i in range(200)]
    with pytest.raises(FleetError, match="at most 8192"):
        ota_bundle.build_bundle(big, 9, "9", lambda m: b"\x00" * 64)
    with pytest.raises(ValueError, match="signature"):  # the caller's signer, not a peer's bytes
        mf.sign_manifest(b"x", lambda m: b"short")


_MP_STAGE = """
import sys, time
sys.path.insert(0, %(root)r)
from firmware.fsutil import PosixFS
from firmware.slots import SlotManager
from protocol import manifest as mf
d = %(dir)r
def read(name):
    f = open(d + '/' + name, 'rb')
    b = f.read()
    f.close()
    return b
signed = read('m')
pub = read('pub')
t0 = time.ticks_us()
m = mf.parse_signed_manifest(signed, pub)
t1 = time.ticks_us()
slot = SlotManager(PosixFS(d + '/flash')).stage(m, lambda i: read('p%%d' %% i))
t2 = time.ticks_us()
print('staged', slot, m.compression, time.ticks_diff(t1, t0) // 1000, time.ticks_diff(t2, t1) // 1000)
"""


def test_deflate_image_is_staged_by_micropython(built, tmp_path):
    """The real app's deflate image, inflated by MicroPython's deflate.DeflateIO in the device's
    own staging code, gives exactly the files the fleet compiled."""
    b = ota_bundle.read_bundle(built["b2"]["path"], built["pub"])
    assert b.manifest.compression == "deflate"
    (tmp_path / "m").write_bytes(b.signed_manifest)
    (tmp_path / "pub").write_bytes(built["pub"])
    for i, p in enumerate(b.pages):
        (tmp_path / ("p%d" % i)).write_bytes(p)
    (tmp_path / "flash").mkdir()
    proc = subprocess.run([micropython_bin(), "-X", "heapsize=512k", "-c", _MP_STAGE % {"root": ROOT, "dir": str(tmp_path)}],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, slot, comp, verify_ms, stage_ms = proc.stdout.split()
    assert (slot, comp) == ("a", "deflate")
    for path, data in b.files():
        assert (tmp_path / "flash" / "a" / path).read_bytes() == data, path
    print("\nMicroPython (unix port): manifest verify %s ms, inflate+stage+verify of %d bytes %s ms"
          % (verify_ms, sum(len(d) for _, d in b.files()), stage_ms))


def test_initial_flash_files_boot_with_the_root_boot_py(built, tmp_path):
    """A blank flash given initial_flash_files() boots slot a: the root boot.py, run as the port
    runs it (as __main__, cwd = flash root: "/" on a board), puts <root>/a first on sys.path."""
    b = ota_bundle.read_bundle(built["b1"]["path"], built["pub"])
    for path, data in ota_bundle.initial_flash_files(b).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    code = "exec(open('boot.py').read())\nimport sys\nprint(sys.path[0])\n"
    proc = subprocess.run([micropython_bin(), "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.split() == [str(tmp_path) + "/a"], proc.stdout + proc.stderr
    mgr = SlotManager(fx_posix(tmp_path))
    assert mgr.running() == (1, "1.0.0") and not mgr.in_trial()
    assert (tmp_path / "main.py").read_text() == crash.ROOT_MAIN_PY
    assert (tmp_path / "a" / "main.py").read_bytes() == ota_bundle.APP_MAIN


def fx_posix(path):
    from firmware.fsutil import PosixFS

    return PosixFS(str(path))


# The CDDL of the OTA formats (for protocol/redmesh.cddl); the vectors and a built bundle must
# validate against it (pycddl, which needs the text-value choice as a rule of its own).
OTA_CDDL = """
ota-signed-manifest = [
  manifest: bstr .size (1..8192),  ; the CBOR of ota-manifest
  signature: bstr .size 64,
]
ota-manifest = [
  format: 1,
  bseq: 1..4294967295,
  version: token16,             ; the text grammar of protocol/text.py
  target-class: token16,
  image-size: 1..4194304,
  page-size: 1..3584,
  pages: [* bstr .size 32],
  files: [1*256 ota-file],
  compression: ota-compression,
]
ota-file = [
  path: tstr .size (1..64),
  size: uint,
  sha256: bstr .size 32,
]
ota-bundle = [
  magic: "redmesh-ota",
  format: 1,
  signed-manifest: bstr,  ; the CBOR of ota-signed-manifest
  pages: [* bstr .size (1..3584)],
]
ota-compression = "none" / "deflate"
"""
# the token rules as protocol/redmesh.cddl writes them (one definition of the text grammar)
with open(os.path.join(ROOT, "protocol", "redmesh.cddl")) as _f:
    OTA_CDDL += "".join(line for line in _f if line.startswith(("token16 =", "token32 =")))


def test_formats_match_the_cddl(built):
    import cbor2
    import ota_vectors as vec
    import pycddl

    signed_schema = pycddl.Schema(OTA_CDDL)
    manifest_schema = pycddl.Schema("start = ota-manifest\n" + OTA_CDDL)
    bundle_schema = pycddl.Schema("start = ota-bundle\n" + OTA_CDDL)
    for name in ("V1", "V2", "V3Z", "V2_CONFLICT"):
        signed = bytes.fromhex("".join(getattr(vec, name)))
        signed_schema.validate_cbor(signed)
        manifest_schema.validate_cbor(cbor2.loads(signed)[0])
    with open(built["b2"]["path"], "rb") as f:
        data = f.read()
    bundle_schema.validate_cbor(data)
    signed = cbor2.loads(data)[2]
    signed_schema.validate_cbor(signed)
    manifest_schema.validate_cbor(cbor2.loads(signed)[0])
    with pytest.raises(pycddl.ValidationError):
        manifest_schema.validate_cbor(cbor2.dumps([1, 2, "v", "esp32", 10, 3584, [b"\0" * 32],
                                                   [["main.py", 1, b"\0" * 32]], "lzma"]))
    for version in ("1.0\nslot=b", "", "-1"):
        with pytest.raises(pycddl.ValidationError):
            manifest_schema.validate_cbor(cbor2.dumps([1, 2, version, "esp32", 10, 3584, [b"\0" * 32],
                                                       [["main.py", 1, b"\0" * 32]], "none"]))


def test_nodes_take_the_class_that_fleet_ota_build_targets():
    # firmware/ota_attach.py gives the OTA engine and the slot manager its TARGET_CLASS: a bundle
    # built with the default --target-class is accepted, any other refused (tests/device/test_ota_core.py)
    from firmware import ota_attach

    assert ota_attach.TARGET_CLASS == ota_bundle.DEFAULT_TARGET
