"""Topologies for the virtual rig: where the street lights are, and how well each pair can hear.

A `Topology` is a list of `Node`s (id, MAC, position in metres and in lat/lon, role, pole,
street) plus a `RadioModel` that turns distances into links. Links are derived, never stored:
the same nodes, radio model and seed always give the same links, so a JSON file only holds the
nodes and the model.

Radio model (ESP-NOW, 802.11b 1 Mbps DSSS, between ESP32s on street-light poles)
--------------------------------------------------------------------------------
Mean received power follows a log-distance path-loss law::

    rssi_dbm(d) = tx_power_dbm - pl0_db - 10 * path_loss_exp * log10(d / 1 m) + shadow + asym

* `tx_power_dbm` 13: the effective radiated power after the PCB antenna and the luminaire's
  metal enclosure (the ESP32 can emit up to 20 dBm; we do not expect it to reach the street).
* `pl0_db` 40: free-space loss at 1 m at 2.44 GHz (20*log10(4*pi/lambda) = 40.2 dB).
* `path_loss_exp` 3.5: urban street with trees, parked vehicles and people; between the
  free-space 2 and the 4+ of dense clutter.
* `shadow`: log-normal shadowing, sigma 3 dB, fixed per link (seeded, clipped at +/-2 sigma):
  one pole pair may be behind a tree for the whole run; it does not change frame to frame.
* `asym`: a small per-direction term (sigma 0.7 dB) for unequal radios and antennas, so a link
  is slightly asymmetric (real ESP-NOW links are; the mesh's link estimator must cope).

Packet reception ratio is a logistic curve in the margin over the 50 % point::

    prr = 1 / (1 + exp(-(rssi_dbm - sens50_dbm) / prr_width_db))

with `sens50_dbm` -95 (the ESP32 datasheet gives -97 dBm sensitivity at 1 Mbps; a street's
2.4 GHz noise costs a couple of dB) and `prr_width_db` 1.5 (the steep "grey region" measured
for 802.11b/802.15.4 links). The curve is for a reference frame of `ref_len` 100 bytes; the
medium scales it for other lengths. Mean values with no shadowing:

    distance m   35     60     70     80     90     100    110    120    130
    rssi dBm    -81.0  -89.2  -91.6  -93.6  -95.4  -97.0  -98.5  -99.8  -101.0
    prr          1.00   0.98   0.91   0.72   0.43   0.21   0.09   0.04   0.02

Poles are 30-40 m apart, so the next pole (~35 m) is near-perfect, two poles away (~70 m) is
usable, three (~105 m) is marginal and four (~140 m) is gone: the mesh has real choices to
make, as on a street. Links exist only within `max_range_m` (150) and with prr >= `min_prr`
(0.01); lowering `max_range_m` (e.g. 50 on a 35 m line) forces strict one-pole hops.

Generators: `district` (a Medellín street grid), `line`, `grid`, `star`. Each returns a
topology checked to be connected to a gateway (`check_connected`), or raises TopologyError.
"""
import hashlib
import heapq
import json
import math
import random
import struct
from collections import deque

from fleet.errors import FleetError

JSON_VERSION = 1
MAC_PREFIX = b"\x02\x52\x4d"  # locally administered, unicast; 0x52 0x4D = "RM" (Red Mesh)
BROADCAST_MAC = b"\xff" * 6
M_PER_DEG_LAT = 111320.0

# The first district: a street grid in Medellín (approximate; see DESIGN.md).
DISTRICT_BOX = {"lat_min": 6.255, "lat_max": 6.280, "lon_min": -75.600, "lon_max": -75.565}
DISTRICT_CENTRE = (
    (DISTRICT_BOX["lat_min"] + DISTRICT_BOX["lat_max"]) / 2,
    (DISTRICT_BOX["lon_min"] + DISTRICT_BOX["lon_max"]) / 2,
)
ROLES = ("node", "gateway")


class TopologyError(FleetError):
    """A topology that cannot be built, loaded or used (message says what to change)."""


def mac_for(node_id):
    """The node's MAC address (6 bytes): 02:52:4d + the 24-bit node id."""
    if not 0 <= node_id < (1 << 24):
        raise TopologyError(f"node id {node_id} does not fit a 24-bit MAC suffix (0..16777215)")
    return MAC_PREFIX + node_id.to_bytes(3, "big")


def mac_str(mac):
    """'02:52:4d:00:00:01' for a 6-byte MAC."""
    return ":".join("%02x" % b for b in mac)


def parse_mac(text):
    """6 bytes from 'aa:bb:cc:dd:ee:ff' or 'aabbccddeeff'; raises TopologyError."""
    clean = text.replace(":", "").replace("-", "")
    try:
        mac = bytes.fromhex(clean)
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise TopologyError(f"expected a MAC like 02:52:4d:00:00:01, got {text!r}")
    return mac


class RadioModel:
    """Parameters of the path-loss and reception model (see the module docstring)."""

    FIELDS = (
        "tx_power_dbm", "pl0_db", "path_loss_exp", "shadowing_sigma_db", "asym_sigma_db",
        "sens50_dbm", "prr_width_db", "ref_len", "max_range_m", "min_prr", "noise_sigma_db",
    )

    def __init__(self, tx_power_dbm=13.0, pl0_db=40.0, path_loss_exp=3.5, shadowing_sigma_db=3.0,
                 asym_sigma_db=0.7, sens50_dbm=-95.0, prr_width_db=1.5, ref_len=100,
                 max_range_m=150.0, min_prr=0.01, noise_sigma_db=1.5):
        self.tx_power_dbm = float(tx_power_dbm)
        self.pl0_db = float(pl0_db)
        self.path_loss_exp = float(path_loss_exp)
        self.shadowing_sigma_db = float(shadowing_sigma_db)
        self.asym_sigma_db = float(asym_sigma_db)
        self.sens50_dbm = float(sens50_dbm)
        self.prr_width_db = float(prr_width_db)
        self.ref_len = int(ref_len)
        self.max_range_m = float(max_range_m)
        self.min_prr = float(min_prr)
        # Per-frame RSSI jitter the medium adds on top of the link's mean (not in the PRR).
        self.noise_sigma_db = float(noise_sigma_db)

    def mean_rssi_dbm(self, distance_m):
        """Mean RSSI at distance_m with no shadowing (distances under 1 m count as 1 m)."""
        d = max(distance_m, 1.0)
        return self.tx_power_dbm - self.pl0_db - 10.0 * self.path_loss_exp * math.log10(d)

    def prr_for_rssi(self, rssi_dbm):
        """Reception ratio of a ref_len-byte frame received at rssi_dbm."""
        x = (rssi_dbm - self.sens50_dbm) / self.prr_width_db
        if x < -40:
            return 0.0
        return 1.0 / (1.0 + math.exp(-x))

    def mean_prr(self, distance_m):
        """Reception ratio at distance_m with no shadowing."""
        return self.prr_for_rssi(self.mean_rssi_dbm(distance_m))

    def to_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - set(cls.FIELDS)
        if unknown:
            raise TopologyError(f"unknown radio model fields {sorted(unknown)}; known: {list(cls.FIELDS)}")
        return cls(**d)

    def replace(self, **changes):
        """A copy with some fields changed."""
        d = self.to_dict()
        d.update(changes)
        return RadioModel.from_dict(d)

    def __eq__(self, other):
        return isinstance(other, RadioModel) and self.to_dict() == other.to_dict()


class Node:
    """One light pole with a node on it. Positions: x_m east, y_m north of the topology origin."""

    __slots__ = ("id", "mac", "x_m", "y_m", "lat", "lon", "role", "pole", "street")

    def __init__(self, node_id, x_m, y_m, lat, lon, role="node", pole="", street="", mac=None):
        if role not in ROLES:
            raise TopologyError(f"node {node_id}: role must be one of {ROLES}, got {role!r}")
        self.id = int(node_id)
        self.mac = mac if mac is not None else mac_for(self.id)
        self.x_m = float(x_m)
        self.y_m = float(y_m)
        self.lat = float(lat)
        self.lon = float(lon)
        self.role = role
        self.pole = pole
        self.street = street

    @property
    def is_gateway(self):
        return self.role == "gateway"

    def to_dict(self):
        return {
            # Full precision: a loaded topology must have exactly the links of the saved one.
            "id": self.id, "mac": mac_str(self.mac), "x_m": self.x_m, "y_m": self.y_m,
            "lat": self.lat, "lon": self.lon, "role": self.role,
            "pole": self.pole, "street": self.street,
        }

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(d["id"], d["x_m"], d["y_m"], d["lat"], d["lon"], d.get("role", "node"),
                       d.get("pole", ""), d.get("street", ""), parse_mac(d["mac"]) if "mac" in d else None)
        except KeyError as e:
            raise TopologyError(f"node entry {d!r} lacks field {e}") from None

    def __repr__(self):
        return f"Node({self.id}, {self.role}, x={self.x_m:.1f}, y={self.y_m:.1f})"


class Link:
    """A directed radio link a->b: mean RSSI (dBm), reception ratio (ref_len frames), distance."""

    __slots__ = ("rssi_dbm", "prr", "distance_m")

    def __init__(self, rssi_dbm, prr, distance_m):
        self.rssi_dbm = rssi_dbm
        self.prr = prr
        self.distance_m = distance_m

    def __repr__(self):
        return f"Link(rssi={self.rssi_dbm:.1f} dBm, prr={self.prr:.3f}, d={self.distance_m:.1f} m)"


def _hash_normal(*key):
    """A standard-normal number fixed by key (blake2b + Box-Muller): cheap, no RNG state."""
    h = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    u1, u2 = struct.unpack(">II", h)
    u1 = (u1 + 1) / 4294967297.0  # (0, 1]
    u2 = u2 / 4294967296.0
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


class Topology:
    """Nodes plus the radio model that links them. Links are computed on demand and cached."""

    def __init__(self, nodes, radio=None, seed=0, kind="custom", meta=None):
        self.nodes = list(nodes)
        self.radio = radio if radio is not None else RadioModel()
        self.seed = int(seed)
        self.kind = kind
        self.meta = dict(meta or {})
        self._by_id = {}
        self._by_mac = {}
        for n in self.nodes:
            if n.id in self._by_id:
                raise TopologyError(f"node id {n.id} appears twice")
            if n.mac in self._by_mac:
                raise TopologyError(f"MAC {mac_str(n.mac)} appears twice (nodes {self._by_mac[n.mac].id}, {n.id})")
            self._by_id[n.id] = n
            self._by_mac[n.mac] = n
        if not self.nodes:
            raise TopologyError("a topology needs at least one node")
        self._links = {}  # a -> {b: Link}
        self._shadow = {}  # (lo, hi) -> a pair's shadowing, until its other end's links are computed
        self._cell_m = max(self.radio.max_range_m, 1.0)
        self._cells = {}
        for n in self.nodes:
            self._cells.setdefault(self._cell(n.x_m, n.y_m), []).append(n)

    # --- lookup -------------------------------------------------------------------------
    def __len__(self):
        return len(self.nodes)

    def ids(self):
        """All node ids, in topology order."""
        return [n.id for n in self.nodes]

    def node(self, node_id):
        """The Node with this id; raises TopologyError."""
        try:
            return self._by_id[node_id]
        except KeyError:
            raise TopologyError(f"no node {node_id} in this topology (ids {self.nodes[0].id}..{self.nodes[-1].id})") from None

    def node_by_mac(self, mac):
        """The Node with this MAC, or None."""
        return self._by_mac.get(bytes(mac))

    def gateways(self):
        """Ids of the gateway nodes."""
        return [n.id for n in self.nodes if n.is_gateway]

    def distance_m(self, a, b):
        na, nb = self.node(a), self.node(b)
        return math.hypot(na.x_m - nb.x_m, na.y_m - nb.y_m)

    # --- links ----------------------------------------------------------------------------
    def _cell(self, x, y):
        return (int(math.floor(x / self._cell_m)), int(math.floor(y / self._cell_m)))

    def _compute_links(self, a):
        na = self.node(a)
        r = self.radio
        out = {}
        cx, cy = self._cell(na.x_m, na.y_m)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for nb in self._cells.get((cx + dx, cy + dy), ()):
                    if nb.id == a:
                        continue
                    d = math.hypot(na.x_m - nb.x_m, na.y_m - nb.y_m)
                    if d > r.max_range_m:
                        continue
                    lo, hi = (a, nb.id) if a < nb.id else (nb.id, a)
                    lim = 2.0
                    # a pair's shadowing is the same both ways: drawn for its first end, kept for the other
                    shadow = self._shadow.pop((lo, hi), None)
                    if shadow is None:
                        shadow = self._shadow[(lo, hi)] = (max(-lim, min(lim, _hash_normal(self.seed, "sh", lo, hi)))
                                                           * r.shadowing_sigma_db)
                    # The neighbour set must be symmetric (carrier sense, collisions), so the
                    # cut-off is on the link's shadowed mean, not on one direction.
                    if r.prr_for_rssi(r.mean_rssi_dbm(d) + shadow) < r.min_prr:
                        continue
                    asym = max(-lim, min(lim, _hash_normal(self.seed, "as", a, nb.id))) * r.asym_sigma_db
                    rssi = r.mean_rssi_dbm(d) + shadow + asym
                    prr = r.prr_for_rssi(rssi)
                    out[nb.id] = Link(rssi, prr, d)
        return out

    def links_from(self, a):
        """{b: Link} for every node b that hears a (computed once, then cached)."""
        got = self._links.get(a)
        if got is None:
            got = self._links[a] = self._compute_links(a)
        return got

    def link(self, a, b):
        """The directed Link a->b, or None when b cannot hear a."""
        return self.links_from(a).get(b)

    def prr(self, a, b):
        """Reception ratio of a ref_len-byte frame from a at b (0.0 when out of range)."""
        lk = self.links_from(a).get(b)
        return lk.prr if lk else 0.0

    def rssi_dbm(self, a, b):
        """Mean RSSI of a's frames at b, or None when out of range."""
        lk = self.links_from(a).get(b)
        return lk.rssi_dbm if lk else None

    def neighbours(self, a, min_prr=None):
        """Ids of the nodes that hear a (optionally only links with prr >= min_prr), by id."""
        links = self.links_from(a)
        if min_prr is None:
            return sorted(links)
        return sorted(b for b, lk in links.items() if lk.prr >= min_prr)

    # --- connectivity -------------------------------------------------------------------
    def hops_to_gateway(self, min_prr=0.5):
        """{node id: hops to the nearest gateway, or None if unreachable}, counting only links
        with prr >= min_prr in both directions (a hop needs the data and the ACK through)."""
        hops = {n.id: None for n in self.nodes}
        q = deque()
        for g in self.gateways():
            hops[g] = 0
            q.append(g)
        while q:
            a = q.popleft()
            for b, lk in self.links_from(a).items():
                if hops[b] is None and lk.prr >= min_prr and self.prr(b, a) >= min_prr:
                    hops[b] = hops[a] + 1
                    q.append(b)
        return hops

    def check_connected(self, min_prr=0.5):
        """Hop distances (see hops_to_gateway); raises TopologyError when a node cannot reach
        any gateway, naming the first few."""
        if not self.gateways():
            raise TopologyError("the topology has no gateway: give at least one node role 'gateway'")
        hops = self.hops_to_gateway(min_prr)
        lost = [i for i, h in hops.items() if h is None]
        if lost:
            raise TopologyError(
                f"{len(lost)} node(s) cannot reach a gateway over links with prr >= {min_prr} "
                f"(e.g. {lost[:8]}): place nodes closer together, add gateways or raise max_range_m")
        return hops

    def summary(self, min_prr=0.5):
        """Plain data: counts, degrees, hop histogram, extent (for `fleet sim` and reports)."""
        hops = self.hops_to_gateway(min_prr)
        hist = {}
        for h in hops.values():
            k = "unreachable" if h is None else h
            hist[k] = hist.get(k, 0) + 1
        degrees = [len(self.neighbours(n.id, min_prr)) for n in self.nodes]
        reach = [h for h in hops.values() if h is not None]
        xs = [n.x_m for n in self.nodes]
        ys = [n.y_m for n in self.nodes]
        return {
            "kind": self.kind, "seed": self.seed, "nodes": len(self.nodes), "gateways": len(self.gateways()),
            "links": sum(len(self.links_from(n.id)) for n in self.nodes),
            "mean_degree": round(sum(degrees) / len(degrees), 2),
            "max_hops": max(reach) if reach else None, "hops": hist,
            "extent_m": [round(max(xs) - min(xs), 1), round(max(ys) - min(ys), 1)],
        }

    # --- persistence --------------------------------------------------------------------
    def to_dict(self):
        return {
            "version": JSON_VERSION, "kind": self.kind, "seed": self.seed, "meta": self.meta,
            "radio": self.radio.to_dict(), "nodes": [n.to_dict() for n in self.nodes],
        }

    def to_json(self):
        """The topology as JSON text (links are derived on load, so they are not stored)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("version") != JSON_VERSION:
            raise TopologyError(f"not a version-{JSON_VERSION} topology (got version {d.get('version') if isinstance(d, dict) else None!r})")
        return cls([Node.from_dict(x) for x in d.get("nodes", [])], RadioModel.from_dict(d.get("radio", {})),
                   d.get("seed", 0), d.get("kind", "custom"), d.get("meta"))

    @classmethod
    def from_json(cls, text):
        """A Topology from to_json() output; raises TopologyError on anything else."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise TopologyError(f"topology file is not JSON ({e}); write one with Topology.save()") from None
        return cls.from_dict(d)

    def save(self, path):
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                return cls.from_json(f.read())
        except OSError as e:
            raise TopologyError(f"cannot read topology {path}: {e.strerror}") from None

    def __eq__(self, other):
        return isinstance(other, Topology) and self.to_dict() == other.to_dict()


# --- coordinates ------------------------------------------------------------------------
def _m_per_deg_lon(lat):
    return M_PER_DEG_LAT * math.cos(math.radians(lat))


def _to_latlon(origin, x_m, y_m):
    lat0, lon0 = origin
    return lat0 + y_m / M_PER_DEG_LAT, lon0 + x_m / _m_per_deg_lon(lat0)


def _place_gateways(points, n_gateways, first=None):
    """Indices of n_gateways points spread over `points`: farthest-point seeding, then a few
    Lloyd rounds (each gateway moves to the point nearest its cluster's centroid) so every
    gateway serves a similar area."""
    if n_gateways < 1:
        raise TopologyError("need at least one gateway (--gateways 1 or more)")
    if n_gateways > len(points):
        raise TopologyError(f"{n_gateways} gateways but only {len(points)} nodes")
    if first is None:
        cx = sum(p[0] for p in points) / len(points)
        cy = sum(p[1] for p in points) / len(points)
        first = min(range(len(points)), key=lambda i: (points[i][0] - cx) ** 2 + (points[i][1] - cy) ** 2)
    chosen = [first]
    best = [(p[0] - points[first][0]) ** 2 + (p[1] - points[first][1]) ** 2 for p in points]
    while len(chosen) < n_gateways:
        i = max(range(len(points)), key=lambda k: best[k])
        chosen.append(i)
        px, py = points[i]
        best = [min(b, (p[0] - px) ** 2 + (p[1] - py) ** 2) for b, p in zip(best, points, strict=True)]
    if n_gateways == 1:
        return chosen
    for _ in range(8):
        clusters = [[] for _ in chosen]
        for k, p in enumerate(points):
            j = min(range(len(chosen)), key=lambda g: (p[0] - points[chosen[g]][0]) ** 2 + (p[1] - points[chosen[g]][1]) ** 2)
            clusters[j].append(k)
        moved = []
        for j, members in enumerate(clusters):
            if not members:
                moved.append(chosen[j])
                continue
            cx = sum(points[k][0] for k in members) / len(members)
            cy = sum(points[k][1] for k in members) / len(members)
            moved.append(min(members, key=lambda k: (points[k][0] - cx) ** 2 + (points[k][1] - cy) ** 2))
        if moved == chosen or len(set(moved)) < len(moved):
            break
        chosen = moved
    return chosen


def _build(kind, points, gateway_idx, origin, seed, radio, meta, poles=None, streets=None):
    nodes = []
    gw = set(gateway_idx)
    for i, (x, y) in enumerate(points):
        lat, lon = _to_latlon(origin, x, y)
        nodes.append(Node(i + 1, x, y, lat, lon, "gateway" if i in gw else "node",
                          poles[i] if poles else "P%05d" % (i + 1), streets[i] if streets else ""))
    topo = Topology(nodes, radio, seed, kind, meta)
    topo.check_connected()
    return topo


# --- small shapes for tests ----------------------------------------------------------------
def line(n, spacing_m=35.0, n_gateways=1, seed=0, radio=None):
    """n nodes on a straight street, spacing_m apart, east of node 1. Node 1 is the gateway; a
    second gateway goes at the far end, further ones spread in between. For strict one-pole hops
    pass radio=RadioModel(max_range_m=1.5 * spacing_m)."""
    if n < 1:
        raise TopologyError("a line needs at least one node")
    points = [(i * spacing_m, 0.0) for i in range(n)]
    if n_gateways < 1 or n_gateways > n:
        raise TopologyError(f"need 1..{n} gateways on a {n}-node line, got {n_gateways}")
    gws = [0] if n_gateways == 1 else [round(k * (n - 1) / (n_gateways - 1)) for k in range(n_gateways)]
    return _build("line", points, gws, DISTRICT_CENTRE, seed, radio,
                  {"spacing_m": spacing_m}, streets=["Calle 44"] * n)


def grid(rows, cols, spacing_m=35.0, n_gateways=1, seed=0, radio=None, n=None):
    """rows x cols nodes spacing_m apart, row by row (n < rows*cols leaves the last row short).
    One gateway: node 1, a corner. More: farthest-point placement from that corner, then a few
    balancing rounds (see _place_gateways), so the corner need not stay a gateway."""
    if rows < 1 or cols < 1:
        raise TopologyError("a grid needs at least 1 row and 1 column")
    points = [(c * spacing_m, r * spacing_m) for r in range(rows) for c in range(cols)]
    if n is not None:
        if not 1 <= n <= len(points):
            raise TopologyError(f"a {rows}x{cols} grid holds 1..{len(points)} nodes, not {n}")
        points = points[:n]
    return _build("grid", points, _place_gateways(points, n_gateways, first=0), DISTRICT_CENTRE, seed,
                  radio, {"rows": rows, "cols": cols, "spacing_m": spacing_m})


def star(n, radius_m=35.0, seed=0, radio=None):
    """A gateway (node 1) with n-1 nodes on a circle of radius_m around it."""
    if n < 1:
        raise TopologyError("a star needs at least one node")
    points = [(0.0, 0.0)]
    for k in range(n - 1):
        a = 2 * math.pi * k / (n - 1)
        points.append((radius_m * math.cos(a), radius_m * math.sin(a)))
    return _build("star", points, [0], DISTRICT_CENTRE, seed, radio, {"radius_m": radius_m})


# --- the district ---------------------------------------------------------------------------
BLOCK_M = (80.0, 100.0)      # distance between parallel streets
POLE_SPACING_M = (30.0, 40.0)
POLE_SETBACK_M = 5.0         # poles stand on one kerb, ~5 m from the street's centre line
POLE_MERGE_M = 12.0          # two poles closer than this (at crossings) are one pole
PATCH_EDGE_M = 45.0          # poles this close are adjacent when growing a compact patch


def _streets(length_m, rng):
    pos = rng.uniform(10.0, 40.0)
    out = []
    while pos < length_m:
        out.append(pos)
        pos += rng.uniform(*BLOCK_M)
    return out


def district_poles(seed=0, width_m=None, height_m=None):
    """All poles of the district street grid: a list of (x_m, y_m, pole id, street name) in
    metres east/north of the box's south-west corner, plus that origin (lat, lon).

    Carreras run north-south, calles east-west (Medellín's convention); names are labels, not
    the real street numbers. A larger width/height extends the grid beyond the box (scale runs).
    """
    rng = random.Random(f"district-{seed}")
    lat0, lon0 = DISTRICT_BOX["lat_min"], DISTRICT_BOX["lon_min"]
    box_w = (DISTRICT_BOX["lon_max"] - lon0) * _m_per_deg_lon((lat0 + DISTRICT_BOX["lat_max"]) / 2)
    box_h = (DISTRICT_BOX["lat_max"] - lat0) * M_PER_DEG_LAT
    w = width_m or box_w
    h = height_m or box_h
    # A grid larger than the box grows around the box's centre.
    x_off, y_off = (box_w - w) / 2, (box_h - h) / 2
    origin = _to_latlon((lat0, lon0), x_off, y_off)
    xs = _streets(w, rng)
    ys = _streets(h, rng)
    cells = {}
    poles = []

    def add(x, y, street):
        cx, cy = int(x // POLE_MERGE_M), int(y // POLE_MERGE_M)
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                for (px, py) in cells.get((cx + i, cy + j), ()):
                    if (px - x) ** 2 + (py - y) ** 2 < POLE_MERGE_M ** 2:
                        return
        cells.setdefault((cx, cy), []).append((x, y))
        poles.append((x, y, "P%05d" % (len(poles) + 1), street))

    for k, x in enumerate(xs):
        name = "Carrera %d" % (90 - k)
        side = POLE_SETBACK_M if rng.random() < 0.5 else -POLE_SETBACK_M
        pos = rng.uniform(0.0, POLE_SPACING_M[1])
        while pos < h:
            add(x + side + rng.uniform(-0.5, 0.5), pos, name)
            pos += rng.uniform(*POLE_SPACING_M)
    for k, y in enumerate(ys):
        name = "Calle %d" % (30 + k)
        side = POLE_SETBACK_M if rng.random() < 0.5 else -POLE_SETBACK_M
        pos = rng.uniform(0.0, POLE_SPACING_M[1])
        while pos < w:
            add(pos, y + side + rng.uniform(-0.5, 0.5), name)
            pos += rng.uniform(*POLE_SPACING_M)
    return poles, origin


def district(n_nodes, n_gateways=1, seed=0, radio=None):
    """A compact, connected patch of n_nodes poles of the Medellín district grid (box lat
    6.255..6.280 N, lon -75.600..-75.565; blocks 80-100 m; a pole every 30-40 m along every
    street), grown pole by pole from a seeded point near the box centre, with n_gateways
    gateways spread over it. The full box holds ~6,800 poles; larger n grows the grid beyond it."""
    if n_nodes < 1:
        raise TopologyError("--nodes must be at least 1")
    if n_gateways < 1 or n_gateways > n_nodes:
        raise TopologyError(f"need 1..{n_nodes} gateways for {n_nodes} nodes, got {n_gateways}")
    poles, origin = district_poles(seed)
    if n_nodes > len(poles) * 0.95:
        scale = math.sqrt(n_nodes * 1.15 / len(poles))
        lat0, lon0 = DISTRICT_BOX["lat_min"], DISTRICT_BOX["lon_min"]
        box_w = (DISTRICT_BOX["lon_max"] - lon0) * _m_per_deg_lon(DISTRICT_CENTRE[0])
        box_h = (DISTRICT_BOX["lat_max"] - lat0) * M_PER_DEG_LAT
        poles, origin = district_poles(seed, box_w * scale, box_h * scale)
    # Grow the patch by shortest path over pole adjacency, so it is compact and connected.
    rng = random.Random(f"patch-{seed}")
    xs = [p[0] for p in poles]
    ys = [p[1] for p in poles]
    cx = (min(xs) + max(xs)) / 2 + rng.uniform(-0.2, 0.2) * (max(xs) - min(xs))
    cy = (min(ys) + max(ys)) / 2 + rng.uniform(-0.2, 0.2) * (max(ys) - min(ys))
    start = min(range(len(poles)), key=lambda i: (xs[i] - cx) ** 2 + (ys[i] - cy) ** 2)
    cells = {}
    for i, p in enumerate(poles):
        cells.setdefault((int(p[0] // PATCH_EDGE_M), int(p[1] // PATCH_EDGE_M)), []).append(i)
    dist = {start: 0.0}
    done = set()
    order = []
    heap = [(0.0, start)]
    while heap and len(order) < n_nodes:
        d, i = heapq.heappop(heap)
        if i in done:
            continue
        done.add(i)
        order.append(i)
        gx, gy = int(xs[i] // PATCH_EDGE_M), int(ys[i] // PATCH_EDGE_M)
        for a in (-1, 0, 1):
            for b in (-1, 0, 1):
                for j in cells.get((gx + a, gy + b), ()):
                    if j in done:
                        continue
                    e = math.hypot(xs[i] - xs[j], ys[i] - ys[j])
                    if e <= PATCH_EDGE_M and d + e < dist.get(j, 1e18):
                        dist[j] = d + e
                        heapq.heappush(heap, (d + e, j))
    if len(order) < n_nodes:
        raise TopologyError(f"the street grid around the start holds only {len(order)} connected poles; ask for fewer nodes")
    points = [(xs[i], ys[i]) for i in order]
    gws = _place_gateways(points, n_gateways)
    return _build("district", points, gws, origin, seed, radio,
                  {"box": DISTRICT_BOX, "poles_in_grid": len(poles)},
                  poles=[poles[i][2] for i in order], streets=[poles[i][3] for i in order])


GENERATORS = {"district": district, "line": line, "grid": grid, "star": star}


def generate(kind, n_nodes, n_gateways=1, seed=0, radio=None):
    """One entry point for `fleet sim up --topology KIND --nodes N --gateways G`: a grid is made
    as square as possible (n must fill it: grid(rows, cols, n=...) makes ragged ones); a star
    has one gateway."""
    if kind == "district":
        return district(n_nodes, n_gateways, seed, radio)
    if kind == "line":
        return line(n_nodes, n_gateways=n_gateways, seed=seed, radio=radio)
    if kind == "grid":
        cols = max(1, int(math.ceil(math.sqrt(n_nodes))))
        rows = int(math.ceil(n_nodes / cols))
        if rows * cols != n_nodes:
            # A CLI user asking for 31 nodes gets told, not a ragged grid (fleet sim des/up rely on it).
            raise TopologyError(f"a grid needs rows x cols nodes; {n_nodes} is not {rows}x{cols}: try {rows * cols}"
                                f" or {(rows - 1) * cols}")
        return grid(rows, cols, n_gateways=n_gateways, seed=seed, radio=radio)
    if kind == "star":
        if n_gateways != 1:
            raise TopologyError("a star has exactly one gateway (its centre): use --gateways 1")
        return star(n_nodes, seed=seed, radio=radio)
    raise TopologyError(f"unknown topology {kind!r}; choose one of {sorted(GENERATORS)}")
