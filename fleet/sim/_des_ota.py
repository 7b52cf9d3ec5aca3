"""OTA in the discrete-event simulator: a real signed bundle, one firmware.ota.OtaEngine per node
over an in-memory page store, and the figures (time until every node holds the bundle, OTA
transmissions per node, telemetry delivery while it spreads).

Two shortcuts, both result-preserving:
- Pages a node stores are kept as references to the bundle's own page bytes when equal (they
  always are once the engine has verified them), so 100,000 nodes do not hold 100,000 copies.
- The Ed25519 check of the signed manifest (pure Python, ~2.4 ms on CPython) is memoised for the
  run: `parse_signed_manifest` is a pure function of (bytes, key), every node checks the same
  manifest, and the engine still calls it and acts on its answer.
"""
import contextlib
import hashlib

import firmware.ota as ota_mod
from firmware.mesh import BROADCAST
from firmware.ota import OtaEngine, OtaParams
from fleet import ota_bundle, signing
from fleet.errors import FleetError
from protocol import ProtocolError, decode, encode

RUNNING_BSEQ = 1
NEW_BSEQ = 2


class MemPageStore:
    """firmware.ota_store.PageStore's interface in memory (one per node)."""

    __slots__ = ("signed", "pages", "canon")

    def __init__(self, canon):
        self.signed = None
        self.pages = {}
        self.canon = canon  # the bundle's pages: equal pages are stored by reference

    def manifest(self):
        return self.signed

    def put_manifest(self, signed):
        self.signed = bytes(signed)
        self.pages = {}

    def put_page(self, i, data):
        c = self.canon[i] if i < len(self.canon) else None
        self.pages[i] = c if c is not None and c == data else bytes(data)

    def get_page(self, i):
        return self.pages.get(i)

    def read_manifest_into(self, buf, offset=0):
        if self.signed is None:
            return -1
        n = max(0, min(len(self.signed) - offset, len(buf)))
        buf[:n] = self.signed[offset:offset + n]
        return n

    def read_page_into(self, i, buf):
        p = self.pages.get(i)
        if p is None:
            return -1
        n = min(len(p), len(buf))
        buf[:n] = p[:n]
        return n

    def drop_pages(self, start):
        for k in [k for k in self.pages if k >= start]:
            del self.pages[k]

    def clear(self):
        self.signed = None
        self.pages = {}


class OtaSetup:
    """The bundle of the run and the engines' construction; `seed()` starts the campaign."""

    def __init__(self, size_bytes, seed):
        if size_bytes < 1:
            raise FleetError("--ota BYTES must be at least 1")
        key = hashlib.sha256(b"redmesh des ota key %d" % seed).digest()
        self.pub = signing.public_key_of(key)
        # incompressible content of the requested size (SHA-256 in counter mode)
        blob = bytearray()
        i = 0
        while len(blob) < size_bytes:
            blob.extend(hashlib.sha256(b"des image %d %d" % (seed, i)).digest())
            i += 1
        try:
            self.bundle = ota_bundle.build_bundle([("app.bin", bytes(blob[:size_bytes]))], NEW_BSEQ, "2.0.0",
                                                  lambda m: signing.sign(key, m), compress=False)
        except FleetError as e:
            raise FleetError(f"--ota {size_bytes}: {e.message}; try a smaller bundle") from None
        self.pages = list(self.bundle.pages)
        self.bytes = len(self.bundle.signed_manifest) + sum(len(p) for p in self.pages)
        self.params = OtaParams()
        self.seeded_us = None
        self.done = 0
        self.tx_at_seed = 0

    def engine(self, n, now_ms):
        """A node's engine at boot, over its page store (kept across power cuts)."""
        if n.store is None:
            n.store = MemPageStore(self.pages)
        seed = (n.id * 2654435761 + n.boot * 40503) & 0xFFFFFFFF
        return OtaEngine(n.id, self.pub, n.store, seed or 1, self.params, running_bseq=RUNNING_BSEQ, now_ms=now_ms)

    @staticmethod
    def air(frame, mesh_hmac):
        """What firmware.ota.OtaAir.poll_tx gives the shell: a broadcast of the encoded frame."""
        return None, BROADCAST, encode(frame, mesh_hmac)

    @staticmethod
    def decode(data, mesh_hmac):
        """OtaAir.on_air's decode, done once per transmission for all its receivers."""
        try:
            return decode(data, mesh_hmac)
        except ProtocolError:
            return None

    def verification_cache(self):
        """Context manager: memoise parse_signed_manifest inside firmware.ota for the run."""
        return _memo_manifest()

    def seed(self, sim, t_us):
        """The gateways receive the bundle from the fleet (as over MQTT) and seed the mesh."""
        self.seeded_us = t_us
        self.tx_at_seed = sum(n.ota.tx_frames for n in sim.nodes if n.ota is not None)
        for g in sim.gateways:
            if g.alive:
                g.ota.offer_bundle(self.bundle.signed_manifest, self.pages, t_us // 1000)
                sim.service(g, t_us)

    def results(self, sim):
        out = {"ota_bytes": self.bytes, "ota_pages": len(self.pages), "ota_seeded_s": None,
               "ota_complete_s": None, "ota_nodes_complete": self.done, "ota_tx_per_node": None}
        if self.seeded_us is None:
            return out
        out["ota_seeded_s"] = round(self.seeded_us / 1e6, 1)
        done = [n.ota_done_us for n in sim.nodes if n.ota_done_us is not None]
        if len(done) == len(sim.nodes):
            out["ota_complete_s"] = round((max(done) - self.seeded_us) / 1e6, 1)
        tx = sum(n.ota.tx_frames for n in sim.nodes if n.ota is not None) - self.tx_at_seed
        out["ota_tx_per_node"] = round(tx / len(sim.nodes), 1)
        end_us = max(done) if len(done) == len(sim.nodes) else sim.end_us
        out["ota_delivery_during"] = _delivery_between(sim, self.seeded_us, min(end_us, sim.measure_until_us))
        return out


def _delivery_between(sim, t0_us, t1_us):
    """First-pass delivery of the readings created in [t0, t1] (telemetry during the campaign)."""
    col = sim.measure
    made = got_n = 0
    for nid, app in sim.apps.items():
        got = col.got.get(nid, ())
        fp = col.first_pass.get(nid, b"")
        for s, c in enumerate(app.created):
            if t0_us <= c <= t1_us:
                made += 1
                if s < len(got) and got[s] and fp[s]:
                    got_n += 1
    return round(got_n / made, 5) if made else None


@contextlib.contextmanager
def _memo_manifest():
    orig = ota_mod.parse_signed_manifest
    cache = {}

    def cached(buf, fleet_pub, verify=None, files=True):
        key = (bytes(buf), bytes(fleet_pub), verify, files)
        hit = cache.get(key)
        if hit is None:
            try:
                hit = (orig(buf, fleet_pub, verify, files), None)
            except ProtocolError as e:
                hit = (None, str(e))
            cache[key] = hit
        if hit[1] is not None:
            raise ProtocolError(hit[1])
        return hit[0]

    ota_mod.parse_signed_manifest = cached
    try:
        yield
    finally:
        ota_mod.parse_signed_manifest = orig

