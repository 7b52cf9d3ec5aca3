"""Deluge-style OTA dissemination (sans-IO): adverts on Trickle, in-order page requests,
broadcast answers, every page checked against the signed manifest.

Units. A bundle is a run of units of up to 3584 bytes (16 packets of 224): first the signed
manifest (mpages = ceil(mlen / 3584) units, one in practice), then the image pages. On the air
`page` is the unit number, so with a one-unit manifest page 0 is the manifest and page i >= 1 is
image page i - 1 (0-based in the manifest's list). `have` counts the units a node holds,
verified and in order; the bundle is complete at have = mpages + npages.

Rules (the engine's whole behaviour; times are the `now_ms` the shell passes in)
- Advertise (bseq, mlen, mid, npages, have) of the stored bundle on a Trickle timer (RFC 6206);
  with none stored, (running bseq, 0, 0, 0, 0). An advert equal to ours is consistent; a
  neighbour's summary that differs from the last one heard from it resets Trickle to Imin.
- A neighbour advertising a bseq above both the running and the stored one, with its whole
  manifest, is a source: fetch the manifest (in RAM), check its id against the advert, its
  Ed25519 signature, its bseq (the advert's, and above the running one) and target class; only
  then does it replace the stored bundle (flash). Lower bseqs are never fetched; a different
  manifest (mid) for the stored bseq, or one that failed, is refused and not fetched again.
- Fetch units strictly in order: after a random delay, ask ONE neighbour that has the next
  unit for the packets still missing (bitmap). Any packet of that unit overheard from anyone
  counts. A request overheard for the same unit, or data flowing, postpones ours; silence for
  req_timeout_ms re-requests (another neighbour after req_retries silent tries).
- A complete image unit is hashed (SHA-256) against the manifest before it is stored or
  served; a bad one is dropped and its senders distrusted for distrust_ms (ignored entirely).
- Serve: requests addressed to us are merged (bitmap OR) for serve_delay_ms, then the packets
  go out by broadcast, lowest unit first; a packet overheard from another server is crossed off.
  A node serves unit p while it fetches p + 1: pages pipeline across hops.
- Every frame out (advert, request, data) spends a token of a bucket refilled at
  tx_rate_per_s (burst tx_burst), so telemetry keeps its share of the channel.
- Resume: on construction the stored manifest and pages are re-checked; the first missing or
  bad page and all after it are dropped.

Outputs: poll_tx() -> OtaAdvert/OtaRequest/OtaData to broadcast (the shell encodes them with
the mesh key; OtaAir below does it for firmware/node.py), poll_event() -> ("progress", pct),
("complete", bseq), ("refused", bseq, reason); next_deadline_ms.
"""
import hashlib

from firmware.compat import verify_signature
from firmware.trickle import Trickle, Xorshift32
from protocol import OTA_PKT_MAX, ProtocolError, decode, encode
from protocol.frames import T_OTA_ADV, T_OTA_DATA, T_OTA_REQ
from protocol.frames_ota import OtaAdvert, OtaData, OtaRequest
from protocol.manifest import (
    DIGEST_LEN,
    MAX_SIGNED,
    PAGE_MAX,
    manifest_at,
    manifest_id,
    manifest_pages,
    manifest_view,
    parse_manifest,
    parse_signed_manifest,
)

# ota_state values for status frames (firmware/slots.py continues at 3)
ST_IDLE = 0
ST_RECEIVING = 1
ST_COMPLETE = 2  # complete and verified, newer than the running app: ready to stage

_TOKEN = 1000  # milli-tokens per frame
_EMPTY = bytearray(0)  # an unallocated buffer (a manifest of several units: only while fetched)
_MAX_REFUSED = 8


class OtaParams:
    """Engine tunables (keyword arguments; defaults below).

    adv_imin_ms/adv_doublings/adv_k: the advert Trickle timer (firmware/trickle.py; Imax = Imin
    * 2**doublings, 64 s by default); tx_rate_per_s/tx_burst: the token bucket every OTA frame
    spends from; req_delay_ms: random wait before a request;
    req_timeout_ms: silence that re-requests; req_retries: silent tries before another
    neighbour; serve_delay_ms: requests merged before serving; distrust_ms: how long a sender of
    a bad page is ignored; neighbour_ttl_ms/max_neighbours: the neighbour table;
    reverify_stored: check the stored manifest's signature at start-up; target_class: refuse
    bundles for another hardware class (None: accept any)."""

    def __init__(self, adv_imin_ms=1000, adv_doublings=6, adv_k=1, tx_rate_per_s=20, tx_burst=4,
                 req_delay_ms=100, req_timeout_ms=400, req_retries=3, serve_delay_ms=50, distrust_ms=60000,
                 neighbour_ttl_ms=180000, max_neighbours=16, reverify_stored=True, target_class=None):
        self.adv_imin_ms = adv_imin_ms
        self.adv_doublings = adv_doublings
        self.adv_k = adv_k
        self.tx_rate_per_s = tx_rate_per_s
        self.tx_burst = tx_burst
        self.req_delay_ms = req_delay_ms
        self.req_timeout_ms = req_timeout_ms
        self.req_retries = req_retries
        self.serve_delay_ms = serve_delay_ms
        self.distrust_ms = distrust_ms
        self.neighbour_ttl_ms = neighbour_ttl_ms
        self.max_neighbours = max_neighbours
        self.reverify_stored = reverify_stored
        self.target_class = target_class


def _mask(npkts):
    return (1 << npkts) - 1


class OtaEngine:
    """One node's OTA receiver and server.

    node_id: this node's id (frames' src/dst); fleet_pub: the fleet's 32-byte Ed25519 public key;
    store: firmware.ota_store.PageStore (or anything with its methods); seed: jitter seed;
    params: OtaParams (None: defaults); running_bseq: bseq of the running (or staged) app;
    now_ms: the time the engine starts at; carry: what carry() returned from an engine of this
    node dropped earlier in this boot (its Trickle, token bucket, neighbour and distrust tables,
    refusals and counters go on; running_bseq and seed are then ignored); rx: the receive
    buffer (PAGE_MAX bytes) to use, allocated by the caller while its heap was fresh; tx: the
    same for the buffer pages are served from (default: allocated at the first request)."""

    def __init__(self, node_id, fleet_pub, store, seed, params=None, running_bseq=0, now_ms=0, carry=None, rx=None,
                 tx=None, mb=None):
        self.node_id = node_id
        self.fleet_pub = fleet_pub
        self.store = store
        self.p = params if params is not None else OtaParams()
        self._now = now_ms
        if carry is None:
            self._rng = Xorshift32(seed ^ node_id)
            self.floor = running_bseq
            self._tokens = self.p.tx_burst * _TOKEN
            self._tok_ms = now_ms
            self.trickle = Trickle(self.p.adv_imin_ms, self.p.adv_doublings, self.p.adv_k, self._rng)
            self.trickle.start(now_ms)
            self._fails = {}
            self._nbs = {}  # src -> [bseq, mid, mlen, npages, have, heard_ms]
            self._distrust = {}
            self._refused = []
            self.tx_frames = 0
            self.bad_pages = 0
        else:
            self._rng = carry["rng"]
            self.floor = carry["floor"]
            self._tokens = carry["tokens"]
            self._tok_ms = carry["tok_ms"]
            self.trickle = carry["trickle"]
            self._fails = carry["fails"]
            self._nbs = carry["nbs"]
            self._distrust = carry["distrust"]
            self._refused = carry["refused"]
            self.tx_frames = carry["tx_frames"]
            self.bad_pages = carry["bad_pages"]
        self.m = None  # the stored bundle's Manifest
        self.mlen = 0  # the stored signed manifest's length (its bytes stay on flash)
        self.mpages = 0
        self.total = 0
        self.have = 0
        self.t_bseq = 0  # a newer manifest being fetched: bseq, mid, mlen (0: none)
        self.t_mid = 0
        self.t_mlen = 0
        self._mbuf = _EMPTY
        self._munits = 0
        self._msrcs = {}
        # the one receive buffer, allocated first and kept for the engine's life: resume checks
        # pages through it, a one-unit manifest is assembled and checked in it; a heap that has
        # run a while may not have 3.5 KB in one piece any more
        if carry is not None:
            rx = carry["rx"]
            tx = carry["tx"]
            mb = carry["mb"]
        # a manifest of several units is assembled in `mb` (MAX_SIGNED bytes, allocated at boot
        # with rx and tx) when given: 4.6 KB in one piece is rarely there once the node has run
        self._mb = mb
        self._rx = rx if rx is not None else bytearray(PAGE_MAX)
        self._rx_unit = -1
        self._rx_bits = 0
        self._rx_srcs = {}
        self._dig = bytearray(DIGEST_LEN)  # a page's digest, read from the stored manifest (_digest)
        self._dig_at = 0
        self._req_due = None
        self._req_nb = None
        self._serve = {}
        self._serve_due = None
        self._tx_unit = -1
        self._tx_buf = tx
        self._ctl = []
        self._events = []
        self.progress_pct = 0
        self._resume(carry is not None)
        if carry is not None and carry["adv_due"]:
            self._ctl.append(self._advert())

    # ---- stored bundle ----------------------------------------------------------------------

    def _resume(self, strict=False):
        try:
            signed = self._stored_signed()
            if signed is None:
                return
            if self.p.reverify_stored:
                m = parse_signed_manifest(signed, self.fleet_pub, verify_signature, False)
            else:
                m = parse_manifest(manifest_view(signed), signed, False)  # in place: no 3 KB block
        except ProtocolError:
            m = None
        except MemoryError:
            if strict:
                raise  # an engine built again mid-boot must hold what the dropped one held
            return  # the heap, not the bundle: keep it on flash, a later boot resumes it
        if m is None or m.bseq < self.floor or not self._class_ok(m):
            self.store.clear()
            return
        self._set_stored(m, signed)
        signed = None
        buf = self._rx
        for i in range(m.npages):
            if not self._page_intact(i, buf):
                self.store.drop_pages(i)
                break
            self.have += 1
        self.progress_pct = self.have * 100 // self.total

    def _stored_signed(self):
        """The stored signed manifest, or None: read without allocating into the receive buffer
        or, when longer than a page, into the manifest buffer allocated at boot (a 4.3 KB read
        after a rollback did not fit a 123k heap); a fresh bytes only without one."""
        buf = self._rx
        n = self.store.read_manifest_into(buf)
        if n < 0:
            return None
        if n == len(buf) and self._mb is not None:
            buf = self._mb
            n = self.store.read_manifest_into(buf)
        return memoryview(buf)[:n] if n < len(buf) else self.store.manifest()

    def _page_intact(self, i, buf):
        """Read stored image page i into buf; True when it matches the manifest."""
        n = self.store.read_page_into(i, buf)
        return n == self.m.page_len(i) and hashlib.sha256(memoryview(buf)[:n]).digest() == self._digest(i)

    def _digest(self, i):
        """Page i's SHA-256 from the stored manifest (on flash, read into a 32-byte buffer: the
        Manifest holds only where the digests are, protocol/manifest.py PageDigests); None when
        the store cannot give it."""
        d = self._dig
        if self.store.read_manifest_into(d, self._dig_at + self.m.pages.offset(i)) != DIGEST_LEN:
            return None
        return d

    def _class_ok(self, m):
        return self.p.target_class is None or m.target_class == self.p.target_class

    def _set_stored(self, m, signed):
        self.m = m
        self._dig_at = manifest_at(signed)  # the manifest bytes' offset in the stored signed manifest
        self.mlen = len(signed)
        self.mpages = manifest_pages(self.mlen)
        self.total = self.mpages + m.npages
        self.have = self.mpages
        self._serve = {}
        self._serve_due = None
        self._tx_unit = -1

    def _install(self, m, signed, now):
        self.store.put_manifest(signed)
        self._set_stored(m, signed)
        self.t_bseq = self.t_mid = self.t_mlen = 0
        self._mbuf = _EMPTY
        self._msrcs = {}
        self._rx_reset(self.have)
        self._progress()
        self.trickle.reset(now)
        self._schedule_request(now)

    # ---- dropped between campaigns (firmware/ota_node.py) ---------------------------------------

    def quiescent(self):
        """True when nothing is fetched, served, scheduled or reported: the engine may be
        dropped (carry() and summary() keep what goes on) and built again when needed."""
        if self.t_bseq or self._serve or self._req_due is not None or self._events:
            return False
        if self.m is not None and self.have < self.total:
            return False
        for f in self._ctl:
            if f.type != T_OTA_ADV:
                return False
        return True

    def summary(self):
        """(bseq, mlen, mid, npages, have) of the stored bundle as adverts carry it, or None."""
        if self.m is None:
            return None
        return self.m.bseq, self.mlen, self.m.mid, self.m.npages, self.have

    def carry(self):
        """What a quiescent engine hands to the one built after it (see __init__), with the
        tunables and limits the stand-in (firmware/ota_node.py) applies while there is none.
        Plain values and firmware.trickle objects only: nothing that keeps this module alive."""
        adv_due = False
        for f in self._ctl:
            adv_due = adv_due or f.type == T_OTA_ADV
        return {"rx": self._rx, "tx": self._tx_buf, "mb": self._mb, "rng": self._rng, "floor": self.floor, "tokens": self._tokens,
                "tok_ms": self._tok_ms,
                "trickle": self.trickle, "fails": self._fails, "nbs": self._nbs, "distrust": self._distrust,
                "refused": self._refused, "tx_frames": self.tx_frames, "bad_pages": self.bad_pages,
                "adv_due": adv_due, "progress": self.progress_pct, "complete_state": ST_COMPLETE,
                "max_signed": MAX_SIGNED, "tx_burst": self.p.tx_burst, "tx_rate_per_s": self.p.tx_rate_per_s,
                "max_neighbours": self.p.max_neighbours}

    def set_running(self, bseq):
        """Tell the engine the bseq now running (after staging or a rollback)."""
        self.floor = bseq

    @property
    def state(self):
        if self.t_bseq or (self.m is not None and self.have < self.total):
            return ST_RECEIVING
        if self.m is not None and self.m.bseq > self.floor:
            return ST_COMPLETE
        return ST_IDLE

    def complete(self):
        """True when the stored bundle is complete (all units verified)."""
        return self.m is not None and self.have == self.total

    def stage_manifest(self):
        """The stored bundle's Manifest with its file list, for staging (self.m keeps only what
        dissemination needs). Its signature was checked when it was stored or resumed. Read
        through the receive buffer (free once the bundle is complete) or the manifest buffer and
        parsed in place."""
        return parse_manifest(manifest_view(self._stored_signed()), None)

    # ---- gateway seeding ----------------------------------------------------------------------

    def offer_bundle(self, signed, pages, now_ms=None):
        """Seed a bundle received from the fleet (gateway): `signed` manifest and the list of
        image pages. Everything is checked as if it came over the air. Raises ProtocolError
        (bad signature, older or conflicting bseq, bad page) with nothing stored."""
        self.offer_manifest(signed, now_ms)
        if len(pages) != self.m.npages:
            raise ProtocolError("bundle has %d pages, its manifest lists %d" % (len(pages), self.m.npages))
        for i in range(self.have - self.mpages, self.m.npages):
            self.offer_page(i, pages[i], now_ms)

    def offer_manifest(self, signed, now_ms=None):
        """Seed a signed manifest (gateway). Raises ProtocolError when it is refused."""
        now = self._now if now_ms is None else now_ms
        m = parse_signed_manifest(signed, self.fleet_pub, verify_signature, False)
        if m.bseq < self.floor:
            raise ProtocolError("bseq %d is below the running %d" % (m.bseq, self.floor))
        if not self._class_ok(m):
            raise ProtocolError("bundle is for %r, not %r" % (m.target_class, self.p.target_class))
        if self.m is not None:
            if m.bseq < self.m.bseq:
                raise ProtocolError("bseq %d is below the stored %d" % (m.bseq, self.m.bseq))
            if m.bseq == self.m.bseq:
                if m.mid != self.m.mid:
                    raise ProtocolError("a different manifest for bseq %d is already stored" % m.bseq)
                return
        self._install(m, bytes(signed), now)

    def offer_page(self, i, data, now_ms=None):
        """Seed image page i (0-based) of the stored manifest; pages go in order. Raises
        ProtocolError for a page out of order or not matching its digest."""
        now = self._now if now_ms is None else now_ms
        if self.m is None or i != self.have - self.mpages:
            raise ProtocolError("page %d out of order (next is %d)" % (i, self.have - self.mpages))
        if len(data) != self.m.page_len(i) or hashlib.sha256(data).digest() != self._digest(i):
            raise ProtocolError("page %d does not match the manifest" % i)
        self._page_ok(i, data, now)

    # ---- inputs ----------------------------------------------------------------------------------

    def on_frame(self, frame, src_mac, now_ms):
        """Handle a decoded OtaAdvert, OtaRequest or OtaData heard from the radio."""
        if now_ms > self._now:
            self._now = now_ms
        if frame.src == self.node_id or self._distrusted(frame.src, now_ms):
            return
        t = frame.type
        if t == T_OTA_DATA:
            self._on_data(frame, now_ms)
        elif t == T_OTA_REQ:
            self._on_request(frame, now_ms)
        elif t == T_OTA_ADV:
            self._on_advert(frame, now_ms)

    def tick(self, now_ms):
        """Advance timers to now_ms (call at next_deadline_ms, or any time)."""
        if now_ms > self._now:
            self._now = now_ms
        if self.trickle.poll(now_ms):
            self._ctl = [f for f in self._ctl if f.type != T_OTA_ADV]
            self._ctl.append(self._advert())
        if self._req_due is not None and now_ms >= self._req_due:
            self._send_request(now_ms)

    # ---- outputs ---------------------------------------------------------------------------------

    def poll_tx(self):
        """Return the next frame to broadcast now, or None (nothing due, or out of tokens)."""
        now = self._now
        self._refill(now)
        if self._tokens < _TOKEN:
            return None
        f = None
        if self._ctl:
            f = self._ctl.pop(0)
        elif self._serve and self._serve_due is not None and now >= self._serve_due:
            f = self._next_data()
        if f is not None:
            self._tokens -= _TOKEN
            self.tx_frames += 1
        return f

    def poll_event(self):
        """Return the next event tuple, or None."""
        return self._events.pop(0) if self._events else None

    @property
    def next_deadline_ms(self):
        """The time tick() next has work (an advert, a request, data or tokens), never None."""
        d = self.trickle.next_fire_ms
        if self._req_due is not None and self._req_due < d:
            d = self._req_due
        want = None  # when a frame is waiting to go out
        if self._ctl:
            want = self._now
        elif self._serve and self._serve_due is not None:
            want = self._serve_due
        if want is not None:
            self._refill(self._now)
            if self._tokens < _TOKEN:
                rate = self.p.tx_rate_per_s or 1
                ready = self._now + (_TOKEN - self._tokens + rate - 1) // rate
                if ready > want:
                    want = ready
            if want < d:
                d = want
        return d

    # ---- helpers -----------------------------------------------------------------------------------

    def _refill(self, now):
        dt = now - self._tok_ms
        if dt > 0:
            self._tokens = min(self.p.tx_burst * _TOKEN, self._tokens + dt * self.p.tx_rate_per_s)
            self._tok_ms = now

    def _distrusted(self, src, now):
        until = self._distrust.get(src)
        if until is None:
            return False
        if now < until:
            return True
        del self._distrust[src]
        return False

    def _distrust_all(self, srcs, now):
        for s in srcs:
            self._distrust[s] = now + self.p.distrust_ms
            self._nbs.pop(s, None)
        if len(self._distrust) > 32:
            for s in [s for s in self._distrust if self._distrust[s] <= now]:
                del self._distrust[s]

    def _refuse(self, bseq, mid, reason):
        if (bseq, mid) in self._refused:
            return
        self._refused.append((bseq, mid))
        if len(self._refused) > _MAX_REFUSED:
            self._refused.pop(0)
        self._events.append(("refused", bseq, reason))

    def _progress(self):
        pct = self.have * 100 // self.total if self.total else 0
        if pct != self.progress_pct:
            self.progress_pct = pct
            self._events.append(("progress", pct))

    def _advert(self):
        if self.m is None:
            return OtaAdvert(self.node_id, self.floor, 0, 0, 0, 0)
        return OtaAdvert(self.node_id, self.m.bseq, self.mlen, self.m.mid, self.m.npages, self.have)

    def _unit_len(self, u, mlen, m):
        mp = manifest_pages(mlen)
        if u < mp:
            return min(PAGE_MAX, mlen - u * PAGE_MAX)
        return m.page_len(u - mp)

    def _target(self):
        """(bseq, mid, next unit, unit length) being fetched, or None."""
        if self.t_bseq:
            u = self._munits
            return self.t_bseq, self.t_mid, u, self._unit_len(u, self.t_mlen, None)
        if self.m is not None and self.have < self.total:
            return self.m.bseq, self.m.mid, self.have, self._unit_len(self.have, self.mlen, self.m)
        return None

    def _rx_reset(self, unit):
        self._rx_unit = unit
        self._rx_bits = 0
        self._rx_srcs = {}

    def _schedule_request(self, now):
        if self._target() is None:
            self._req_due = None
        elif self._req_due is None:
            self._req_due = now + self._rng.below(self.p.req_delay_ms + 1)

    # ---- adverts ---------------------------------------------------------------------------------

    def _on_advert(self, a, now):
        nbs = self._nbs
        prev = nbs.get(a.src)
        changed = prev is None or prev[0] != a.bseq or prev[1] != a.mid or prev[4] != a.have
        if prev is None and len(nbs) >= self.p.max_neighbours:
            oldest = None
            for s in nbs:
                if oldest is None or nbs[s][5] < nbs[oldest][5]:
                    oldest = s
            del nbs[oldest]
        nbs[a.src] = [a.bseq, a.mid, a.mlen, a.npages, a.have, now]
        if changed:
            self._fails.pop(a.src, None)
        if a.mlen > MAX_SIGNED:
            return
        mine = self.m.bseq if self.m is not None else 0
        if a.bseq > self.floor and a.bseq > mine and a.mlen:
            if (a.bseq, a.mid) in self._refused or a.have < manifest_pages(a.mlen):
                return
            if self.t_bseq == 0 or a.bseq > self.t_bseq:
                self.t_bseq, self.t_mid, self.t_mlen = a.bseq, a.mid, a.mlen
                if manifest_pages(a.mlen) < 2:
                    self._mbuf = _EMPTY
                elif self._mb is not None and len(self._mb) >= a.mlen:
                    self._mbuf = memoryview(self._mb)[:a.mlen]
                else:
                    self._mbuf = bytearray(a.mlen)
                self._munits = 0
                self._msrcs = {}
                self._rx_reset(0)
                self._req_due = None
            self._schedule_request(now)
            if changed:
                self.trickle.reset(now)
            return
        if self.m is None:
            self.trickle.heard_consistent()
            return
        if a.bseq < self.m.bseq:
            if changed:
                self.trickle.reset(now)  # behind us: let it hear our advert soon
            return
        if a.bseq == self.m.bseq and a.mlen:
            if a.mid != self.m.mid:
                self._refuse(a.bseq, a.mid, "a different manifest for bseq %d" % a.bseq)
                return
            if a.have > self.have:
                if not self.t_bseq:
                    self._schedule_request(now)
                if changed:
                    self.trickle.reset(now)
            elif a.have < self.have:
                if changed:
                    self.trickle.reset(now)
            else:
                self.trickle.heard_consistent()
            return
        self.trickle.heard_consistent()

    # ---- requests ---------------------------------------------------------------------------------

    def _send_request(self, now):
        tgt = self._target()
        if tgt is None:
            self._req_due = None
            return
        bseq, mid, unit, size = tgt
        if self._rx_unit != unit:
            self._rx_reset(unit)
        best = None
        best_key = None
        for s in self._nbs:
            e = self._nbs[s]
            if e[0] != bseq or e[1] != mid or e[4] <= unit or now - e[5] > self.p.neighbour_ttl_ms:
                continue
            fails = self._fails.get(s, 0)
            if fails >= self.p.req_retries:
                continue
            # keep asking the same server while it answers; else the least-failed, most recent
            key = (0 if s == self._req_nb else 1, fails, -e[5])
            if best_key is None or key < best_key:
                best, best_key = s, key
        if best is None:
            self._fails = {}
            self._req_due = None  # wait for an advert
            return
        npk = (size + OTA_PKT_MAX - 1) // OTA_PKT_MAX
        missing = _mask(npk) & ~self._rx_bits
        self._ctl = [f for f in self._ctl if f.type != T_OTA_REQ]
        self._ctl.append(OtaRequest(self.node_id, best, bseq, unit, missing))
        self._fails[best] = self._fails.get(best, 0) + 1
        self._req_nb = best
        self._req_due = now + self.p.req_timeout_ms

    def _on_request(self, r, now):
        if r.dst != self.node_id:
            tgt = self._target()
            if tgt is not None and r.bseq == tgt[0] and r.page == tgt[2] and self._req_due is not None:
                # someone asked for the unit we need: its answer is broadcast, wait for it
                later = now + self.p.req_timeout_ms
                if self._req_due < later:
                    self._req_due = later
            return
        if self.m is None or r.bseq != self.m.bseq or r.page >= self.have:
            return
        size = self._unit_len(r.page, self.mlen, self.m)
        bits = r.missing & _mask((size + OTA_PKT_MAX - 1) // OTA_PKT_MAX)
        if not bits:
            return
        self._serve[r.page] = self._serve.get(r.page, 0) | bits
        if self._serve_due is None:
            self._serve_due = now + self.p.serve_delay_ms

    # ---- data ---------------------------------------------------------------------------------------

    def _unit_bytes(self, u):
        """The bytes of stored unit u (manifest chunk or verified page), or None."""
        if u != self._tx_unit:
            i = u - self.mpages
            if self._tx_buf is None:
                self._tx_buf = bytearray(PAGE_MAX)  # one buffer for the node's life: no fragmentation
            self._tx_unit = -1
            if u < self.mpages:  # a chunk of the signed manifest, read from flash (not kept in RAM)
                want = min(PAGE_MAX, self.mlen - u * PAGE_MAX)
                if self.store.read_manifest_into(memoryview(self._tx_buf)[:want], u * PAGE_MAX) != want:
                    return None
                self._tx_unit = u
                return self._tx_buf
            if not self._page_intact(i, self._tx_buf):
                # flash lost it: forget this page and those after it, fetch them again
                self.store.drop_pages(i)
                self.have = u
                self._progress()
                for k in [k for k in self._serve if k >= u]:
                    del self._serve[k]
                self._schedule_request(self._now)
                return None
            self._tx_unit = u
        return self._tx_buf

    def _next_data(self):
        while self._serve:
            u = min(self._serve)
            bits = self._serve[u]
            k = 0
            while not (bits >> k) & 1:
                k += 1
            bits &= ~(1 << k)
            if bits:
                self._serve[u] = bits
            else:
                del self._serve[u]
            if not self._serve:
                self._serve_due = None
            data = self._unit_bytes(u)
            if data is None:
                continue
            end = min((k + 1) * OTA_PKT_MAX, self._unit_len(u, self.mlen, self.m))
            return OtaData(self.node_id, self.m.bseq, u, k, bytes(data[k * OTA_PKT_MAX:end]))
        self._serve_due = None
        return None

    def _on_data(self, d, now):
        if self.m is not None and d.bseq == self.m.bseq and d.page in self._serve:
            bits = self._serve[d.page] & ~(1 << d.pkt)  # another server sent it: cross it off
            if bits:
                self._serve[d.page] = bits
            else:
                del self._serve[d.page]
                if not self._serve:
                    self._serve_due = None
        tgt = self._target()
        if tgt is None:
            return
        bseq, mid, unit, size = tgt
        if d.bseq != bseq or d.page != unit:
            return
        npk = (size + OTA_PKT_MAX - 1) // OTA_PKT_MAX
        if d.pkt >= npk or len(d.data) != min(OTA_PKT_MAX, size - d.pkt * OTA_PKT_MAX):
            self._distrust_all((d.src,), now)
            return
        if self._rx_unit != unit:
            self._rx_reset(unit)
        bit = 1 << d.pkt
        if self._rx_bits & bit:
            return
        off = d.pkt * OTA_PKT_MAX
        self._rx[off:off + len(d.data)] = d.data
        self._rx_bits |= bit
        if len(self._rx_srcs) < 16:
            self._rx_srcs[d.src] = True
        self._fails.pop(d.src, None)
        self._req_due = now + self.p.req_timeout_ms
        if self._rx_bits == _mask(npk):
            self._unit_done(unit, size, now)

    def _unit_done(self, unit, size, now):
        srcs = list(self._rx_srcs)
        self._req_due = None
        if self.t_bseq:
            self._munits = unit + 1
            for s in srcs:
                self._msrcs[s] = True
            if not self._mbuf:  # a one-unit manifest: checked where it was received
                self._manifest_done(now, memoryview(self._rx)[:size])
                return
            self._mbuf[unit * PAGE_MAX:unit * PAGE_MAX + size] = memoryview(self._rx)[:size]
            if self._munits < manifest_pages(self.t_mlen):
                self._rx_reset(self._munits)
                self._schedule_request(now)
                return
            self._manifest_done(now, self._mbuf)
            return
        i = unit - self.mpages
        page = memoryview(self._rx)[:size]  # no copy: the heap is tight
        if hashlib.sha256(page).digest() != self._digest(i):
            self.bad_pages += 1
            self._distrust_all(srcs, now)
            self._rx_reset(unit)
            self._schedule_request(now)
            return
        self._page_ok(i, page, now)

    def _page_ok(self, i, page, now):
        self.store.put_page(i, page)
        self.have += 1
        self._progress()
        self.trickle.reset(now)
        if self.have == self.total:
            self._rx_unit = -1
            self._req_due = None
            self._events.append(("complete", self.m.bseq))
        else:
            self._rx_reset(self.have)
            self._schedule_request(now)

    def _manifest_done(self, now, signed):
        # `signed` (the receive buffer or _mbuf) is checked in place: one copy of it on the heap
        # at the worst moment; the Manifest makes its own bytes copy after the check
        bseq, mid = self.t_bseq, self.t_mid
        srcs = list(self._msrcs)
        self.t_bseq = self.t_mid = self.t_mlen = 0
        self._mbuf = _EMPTY
        self._msrcs = {}
        reason = None
        m = None
        if manifest_id(signed) != mid:
            # packets of another manifest got mixed in: distrust their senders, fetch again
            self._distrust_all(srcs, now)
            self._rx_unit = -1
            self._schedule_request(now)
            return
        bad = False  # a sender served something no honest node stores
        try:
            m = parse_signed_manifest(signed, self.fleet_pub, verify_signature, False)
        except ProtocolError as e:
            reason = str(e)
            bad = True
        if m is not None:
            mine = self.m.bseq if self.m is not None else 0
            if m.bseq != bseq:
                reason = "manifest bseq %d, advertised %d" % (m.bseq, bseq)
                bad = True
            elif m.bseq <= self.floor or m.bseq <= mine:
                reason = "bseq %d is not above the running %d" % (m.bseq, max(self.floor, mine))
            elif not self._class_ok(m):
                reason = "bundle is for %r, not %r" % (m.target_class, self.p.target_class)
        if reason is not None:
            if bad:
                self._distrust_all(srcs, now)
            self._refuse(bseq, mid, reason)
            self._rx_unit = -1
            self._req_due = None
            self._schedule_request(now)
            return
        self._install(m, signed, now)  # written to flash before the receive buffer is reused


class OtaAir:
    """The engine behind bytes, for the shell (firmware/node.py): decodes OTA frames with the
    mesh key, encodes what the engine sends as broadcasts (token None, dst FF:FF:FF:FF:FF:FF)."""

    BROADCAST = b"\xff\xff\xff\xff\xff\xff"

    def __init__(self, engine, mesh_key):
        self.engine = engine
        self.mesh_key = mesh_key
        self.rx_errors = 0

    def on_air(self, mac, msg, now_ms):
        try:
            f = decode(msg, self.mesh_key)
        except ProtocolError:
            self.rx_errors += 1
            return
        self.engine.on_frame(f, mac, now_ms)

    def tick(self, now_ms):
        self.engine.tick(now_ms)

    def poll_tx(self):
        f = self.engine.poll_tx()
        if f is None:
            return None
        return None, self.BROADCAST, encode(f, self.mesh_key)

    def poll_event(self):
        return self.engine.poll_event()

    @property
    def next_deadline_ms(self):
        return self.engine.next_deadline_ms

    @property
    def state(self):
        return self.engine.state

    @property
    def progress_pct(self):
        return self.engine.progress_pct
