"""The fault campaign (issue 16): four faults against a real `fleet collect` process and a real
broker (mosquitto), each reporting what was lost, what the operator saw and how long recovery
took. tests/test_faults.py runs the same scenarios (shorter) and asserts; this script prints the
table (`make bench` runs it through bench/run.py).

    .venv/bin/python bench/fault_campaign.py [--quick] [--only kill,enospc,clock,flap]

1. kill: the collector SIGSTOPs itself inside a batch transaction (after the INSERTs, before the
   COMMIT: REDMESH_FAULT_STOP_BEFORE_COMMIT, fleet/collector.py) and is SIGKILLed there; then
   restarted. Nothing answers resend commands here, so only the broker's redelivery of
   unacknowledged messages can bring the torn batch back.
2. enospc: the fleet home (store) on a real tmpfs of a few MB, filled by another file until
   ENOSPC, then freed (needs root for `mount -t tmpfs`; skipped with the reason otherwise).
3. clock: a gateway whose clock jumps back an hour and later is right again; half its nodes have
   taken the wrong time from its beacons, half not yet (synthetic envelopes: no firmware runs).
4. flap: the gateway's broker connection cut every 10 s for 5 min (a TCP proxy between the
   gateway and the broker closes it and refuses new ones for a while; the broker itself keeps
   running). The gateway here is a CPython stand-in (paho, persistent session, QoS 1, what the
   firmware does with its uplink), not the firmware.

Every wait is on a condition with a timeout; every process started is stopped by PID.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import protocol  # noqa: E402
from fleet.collector import FAULT_STOP_MARK, FLAG_TIME_RESTAMPED  # noqa: E402
from fleet.collector_mqtt import start_collector_process  # noqa: E402
from fleet.home import FleetHome  # noqa: E402
from fleet.sim.broker import free_port, mosquitto_path, start_broker_process, start_mosquitto  # noqa: E402
from fleet.store import SQLiteStore  # noqa: E402
from protocol.envelope import state_topic, uplink_topic  # noqa: E402

NET = 1
GW = 100
NODES = list(range(1, 21))
FLEET = [sys.executable, "-c", "import sys; from fleet.cli import main; sys.exit(main())"]


class Skip(Exception):
    """The scenario cannot run here; the message says why."""


# ---- shared parts -------------------------------------------------------------------------------

def make_home(path):
    h = FleetHome(path)
    h.ensure()
    h.keys().init()
    with SQLiteStore(h.store_path) as s:
        s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    return h


class Mesh:
    """Telemetry frames of NODES, authenticated as the nodes would (protocol.encode), and
    envelopes of them as the gateway would publish."""

    def __init__(self, keys):
        self.mesh = keys.mesh_key()
        self.node_keys = {n: keys.node_key(n) for n in NODES}
        self.next_seq = {n: 0 for n in NODES}
        self.eseq = 0

    def frame(self, node, time_s, k=1):
        seq = self.next_seq[node]
        self.next_seq[node] += k
        readings = [protocol.Reading(dt_s=k - 1 - i, pm1=seq % 500, pm25=(seq * 7) % 900, pm10=300, rh=60, temp=250,
                                     n=30, flags=0) for i in range(k)]
        f = protocol.Telemetry(origin=node, seq=seq, time_s=time_s, readings=readings, hops=1, cost=10)
        return protocol.encode(f, self.mesh, self.node_keys[node])

    def envelope(self, rx_s, frames):
        self.eseq += 1
        return protocol.encode(protocol.Envelope(GW, self.eseq, [(rx_s * 1000, -60, fb) for fb in frames]))

    def round(self, rx_s, k=1, time_of=None):
        """One envelope: a frame of k readings from every node, received at gateway time rx_s;
        time_of(node) gives each node's own time (default: the gateway's)."""
        return self.envelope(rx_s, [self.frame(n, rx_s if time_of is None else time_of(n), k) for n in NODES])

    def produced(self):
        return {(n, s) for n, top in self.next_seq.items() for s in range(top)}


class Gateway:
    """The gateway's MQTT side: paho, persistent session (clean_session False), QoS 1. paho keeps
    every unacknowledged publish and sends it again after a reconnect, as the firmware's uplink
    keeps its backlog."""

    def __init__(self, port, client_id=f"gw-{GW}"):
        import paho.mqtt.client as mqtt

        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.connects = 0
        self.disconnects = 0
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.acked = set()
        self.c.on_publish = lambda c, u, mid, rc, props: self.acked.add(mid)
        self.c.reconnect_delay_set(0.2, 2)
        # as firmware/gateway.py: a retained "offline" last will, "online" on every connect
        self.c.will_set(state_topic(NET, GW), b"offline", qos=1, retain=True)
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        self.infos = []
        wait_for(lambda: self.connects, 30, "the gateway is connected")

    def _on_connect(self, *a):
        self.connects += 1
        self.c.publish(state_topic(NET, GW), b"online", qos=1, retain=True)

    def _on_disconnect(self, *a):
        self.disconnects += 1

    def publish(self, payload):
        self.infos.append(self.c.publish(uplink_topic(NET, GW), payload, qos=1))

    def wait_acked(self, timeout_s=60):
        # paho keeps a QoS-1 publish made while disconnected and sends it after the reconnect
        wait_for(lambda: all(i.mid in self.acked for i in self.infos), timeout_s,
                 "the broker acknowledged every publish")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def wait_for(cond, timeout_s, what, every_s=0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting until {what}")
        time.sleep(every_s)


def stored(home):
    """(set of (node, seq), row count, rows flagged TIME_RESTAMPED) in the store."""
    with SQLiteStore(home.store_path) as s:
        pairs = set(s.db.execute("SELECT node, seq FROM readings").fetchall())
        count = s.db.execute("SELECT count(*) FROM readings").fetchone()[0]
        flagged = s.db.execute("SELECT count(*) FROM readings WHERE flags & ?", (FLAG_TIME_RESTAMPED,)).fetchone()[0]
    return pairs, count, flagged


def log_lines(path, start=0, needles=("collector:", "store ", "clock", "fault hook", "Traceback", "ERROR")):
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return [ln for ln in text.splitlines() if any(n in ln for n in needles)]


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def fleet_status(home):
    """What `fleet status` printed (first lines) and its exit code."""
    # this tree's fleet (not whichever `fleet` is on PATH)
    p = subprocess.run(FLEET + ["status", "--home", home.path], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, cwd=ROOT)
    out = (p.stdout + p.stderr).strip().splitlines()
    return p.returncode, out[:2]


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _need_mosquitto():
    if mosquitto_path() is None:
        raise Skip("mosquitto is not installed (apt-get install mosquitto)")


class Setup:
    """A tmp dir, mosquitto, a fleet home (at home_path when given) and the collector's log path."""

    def __init__(self, workdir, home_path=None, broker="mosquitto"):
        self.dir = workdir
        if broker == "amqtt":
            self.broker = start_broker_process(log_path=os.path.join(workdir, "amqtt.log"))
        else:
            _need_mosquitto()
            os.makedirs(os.path.join(workdir, "mosquitto"), exist_ok=True)
            self.broker = start_mosquitto(data_dir=os.path.join(workdir, "mosquitto"))
        self.url = f"mqtt://127.0.0.1:{self.broker.port}"
        self.home = make_home(home_path or os.path.join(workdir, "home"))
        self.log = os.path.join(workdir, "collector.log")
        self.cp = None
        self.gw = None

    def collector(self, env_extra=None, url=None):
        env = dict(os.environ)
        env.pop("REDMESH_FAULT_STOP_BEFORE_COMMIT", None)
        env.update(env_extra or {})
        self.cp = start_collector_process(self.home.path, url or self.url, log_path=self.log, env=env,
                                          client_id="collector-faults")
        return self.cp

    def close(self):
        if self.gw is not None:
            self.gw.close()
        if self.cp is not None:
            self.cp.stop()
        self.broker.close()


# ---- 1. collector SIGKILLed inside a batch commit ----------------------------------------------------

def kill_mid_commit(workdir, groups=3, envelopes=10, k=3, broker="mosquitto"):
    """Groups of envelopes, each waited until stored; the collector stops itself inside the
    commit of the last group and is SIGKILLed there; one more group is published while it is
    down; restarted, every (node, seq) must be stored exactly once."""
    s = Setup(workdir, broker=broker)
    try:
        m = Mesh(s.home.keys())
        cp = s.collector({"REDMESH_FAULT_STOP_BEFORE_COMMIT": str(groups)})
        s.gw = Gateway(s.broker.port)
        t = int(time.time())
        for g in range(groups):
            for _ in range(envelopes):
                t += 1
                s.gw.publish(m.round(t, k))
            s.gw.wait_acked()
            if g < groups - 1:
                want = m.produced()
                wait_for(lambda want=want: stored(s.home)[0] >= want, 60, f"group {g + 1} is stored")
        wait_for(lambda: FAULT_STOP_MARK in open(s.log, errors="replace").read() and proc_state(cp.pid) == "T", 60,
                 "the collector stopped inside its commit")
        at_kill = stored(s.home)[1]
        produced_at_kill = len(m.produced())
        cp.kill()  # SIGKILL with the transaction open
        after_kill = stored(s.home)[1]
        for _ in range(envelopes):  # published while the collector is down
            t += 1
            s.gw.publish(m.round(t, k))
        s.gw.wait_acked()
        mark = log_size(s.log)
        t0 = time.monotonic()
        s.collector()
        want = m.produced()
        try:
            wait_for(lambda: stored(s.home)[0] >= want, 90 if broker == "mosquitto" else 30,
                     "every reading is stored after the restart", every_s=0.02)
            recovery = time.monotonic() - t0
        except TimeoutError:
            if broker == "mosquitto":
                raise
            recovery = None  # amqtt 0.12 does not redeliver: counted below (gap repair's job)
        pairs, count, _ = stored(s.home)
        wait_for(lambda: log_lines(s.log, mark, ("collector: stored",)), 30, "a progress line after the restart")
        saw = ([ln for ln in log_lines(s.log) if FAULT_STOP_MARK in ln]
               + log_lines(s.log, mark, ("collector: subscribed",))[:1] + log_lines(s.log, mark, ("collector: stored",))[:1])
        return {
            "fault": f"collector SIGKILLed between INSERT and COMMIT ({broker})",
            "published": len(want), "stored": count, "distinct": len(pairs), "missing": len(want - pairs),
            "uncommitted_at_kill": produced_at_kill - at_kill, "stored_at_kill": after_kill,
            "lost": len(want - pairs), "duplicates_in_store": count - len(pairs),
            "recovery_s": None if recovery is None else round(recovery, 2),
            "recovery_what": "restart until all stored" if recovery is not None else "never: not redelivered",
            "operator_saw": saw, "status": fleet_status(s.home),
        }
    finally:
        s.close()


# ---- 2. the store's disk full, then freed ---------------------------------------------------------

def _fill(path, chunk=1 << 16):
    """Write `path` until the filesystem is full (ENOSPC), down to single blocks. Returns bytes."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        size = chunk
        while size >= 512:
            try:
                n += f.write(b"\0" * size)
            except OSError as e:
                if e.errno != 28:
                    raise
                size //= 2
    return n


def disk_full(workdir, size_mb=6, envelopes=40, k=5):
    """The fleet home on a tmpfs of size_mb; a filler file takes every free byte; a burst of
    readings arrives; then the filler is removed."""
    if os.geteuid() != 0:
        raise Skip("mounting a tmpfs needs root (mount -t tmpfs); not root here")
    mnt = os.path.join(workdir, "mnt")
    os.makedirs(mnt, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", mnt], capture_output=True, text=True,
                       timeout=30)
    if p.returncode != 0:
        raise Skip(f"mount -t tmpfs refused here: {p.stderr.strip()}")
    s = None
    try:
        s = Setup(workdir, home_path=os.path.join(mnt, "home"))
        m = Mesh(s.home.keys())
        s.collector()
        s.gw = Gateway(s.broker.port)
        t = int(time.time())
        for _ in range(5):
            t += 1
            s.gw.publish(m.round(t, 1))
        s.gw.wait_acked()
        first = m.produced()
        wait_for(lambda: stored(s.home)[0] >= first, 60, "the first readings are stored")
        filler = os.path.join(mnt, "filler")
        filled = _fill(filler)
        mark = log_size(s.log)
        for _ in range(envelopes):
            t += 1
            s.gw.publish(m.round(t, k))
        s.gw.wait_acked()
        wait_for(lambda: "store write failed" in open(s.log, errors="replace").read(), 60,
                 "the collector reports the failed write")
        wait_for(lambda: "STORE FAILING" in open(s.log, errors="replace").read(), 60,
                 "the collector's progress line shows the store failing")
        pairs_full, _, _ = stored(s.home)
        held = len(m.produced()) - len(pairs_full)
        status_full = fleet_status(s.home)
        alive = s.cp.alive()
        t0 = time.monotonic()
        os.remove(filler)
        want = m.produced()
        wait_for(lambda: stored(s.home)[0] >= want, 120, "every reading is stored after space is freed", every_s=0.02)
        recovery = time.monotonic() - t0
        wait_for(lambda: "store writable again" in open(s.log, errors="replace").read(), 30,
                 "the collector reports the store writable again")
        pairs, count, _ = stored(s.home)
        lines = log_lines(s.log, mark)
        return {
            "fault": f"store disk full (tmpfs {size_mb} MB filled, ENOSPC), then freed",
            "published": len(want), "stored": count, "distinct": len(pairs), "missing": len(want - pairs),
            "lost": len(want - pairs), "duplicates_in_store": count - len(pairs), "filler_bytes": filled,
            "held_while_full": held, "collector_alive_while_full": alive,
            "tracebacks": sum("Traceback" in ln for ln in lines),
            "recovery_s": round(recovery, 2), "recovery_what": "space freed until all stored",
            "operator_saw": ([ln for ln in lines if "store write failed" in ln][:1]
                             + [ln for ln in lines if "STORE FAILING" in ln][:1]
                             + [ln for ln in lines if "store writable again" in ln][:1]),
            "status_while_full": status_full,
            "status": fleet_status(s.home),
        }
    finally:
        if s is not None:
            s.close()
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)


# ---- 3. the gateway's clock jumps back an hour ----------------------------------------------------

def clock_back(workdir, rounds=10, step_s=10, jump_s=3600):
    """Gateway time t advancing step_s per envelope; then the gateway clock is jump_s behind for
    `rounds` envelopes (odd nodes have taken the wrong time from its beacons, even ones still
    have the right one); then it is right again."""
    s = Setup(workdir)
    try:
        m = Mesh(s.home.keys())
        s.collector()
        s.gw = Gateway(s.broker.port)
        true_t = int(time.time()) - 3 * rounds * step_s
        truth = {}  # (node, seq) -> true time

        def send(gw_offset, synced):
            nonlocal true_t
            true_t += step_s
            before = dict(m.next_seq)

            def time_of(n):
                return true_t + (gw_offset if synced(n) else 0)

            s.gw.publish(m.round(true_t + gw_offset, 1, time_of))
            for n in NODES:
                truth[(n, before[n])] = true_t

        for _ in range(rounds):
            send(0, lambda n: True)
        for _ in range(rounds):
            send(-jump_s, lambda n: n % 2 == 1)
        for _ in range(rounds):
            send(0, lambda n: True)
        s.gw.wait_acked()
        want = m.produced()
        wait_for(lambda: stored(s.home)[0] >= want, 60, "every reading is stored")
        with SQLiteStore(s.home.store_path) as st:
            rows = st.db.execute("SELECT node, seq, ts, flags FROM readings").fetchall()
            events = st.events(kind="clock_back") + st.events(kind="clock_restored")
        errs = [abs(ts - truth[(n, q)]) for n, q, ts, _ in rows]
        wrong = [e for e in errs if e > 2 * step_s]
        flagged = [(n, q) for n, q, _, fl in rows if fl & FLAG_TIME_RESTAMPED]
        return {
            "fault": f"gateway clock back {jump_s} s for {rounds} envelopes, then right again",
            "published": len(want), "stored": len(rows), "distinct": len({(n, q) for n, q, _, _ in rows}),
            "lost": len(want - {(n, q) for n, q, _, _ in rows}), "duplicates_in_store": 0,
            "restamped": len(flagged), "max_time_error_s": max(errs), "readings_off_by_more_than_2_steps": len(wrong),
            "events": [(e["kind"], e["node"], e["detail"]) for e in events],
            "recovery_s": 0.0, "recovery_what": "from the first envelope after the jump (per envelope)",
            "operator_saw": log_lines(s.log, 0, ("clock went back", "clock is right"))[:2], "status": fleet_status(s.home),
        }
    finally:
        s.close()


# ---- 4. the gateway's uplink flapping ---------------------------------------------------------------

class FlapProxy:
    """A TCP proxy gateway -> broker: `cut()` closes every connection through it and refuses
    new ones until `restore()` (the gateway's uplink gone and back)."""

    def __init__(self, broker_port):
        self.broker_port = broker_port
        self.port = free_port()
        self.up = True
        self.conns = []
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", self.port))
        self.srv.settimeout(0.2)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            if not self.up:
                c.close()
                continue
            try:
                b = socket.create_connection(("127.0.0.1", self.broker_port), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, b]
            for a, z in ((c, b), (b, c)):
                threading.Thread(target=self._pipe, args=(a, z), daemon=True).start()

    @staticmethod
    def _pipe(a, z):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                z.sendall(d)
        except OSError:
            pass
        for x in (a, z):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.up = False
        with self.lock:
            conns, self.conns = self.conns, []
        for x in conns:
            try:
                x.shutdown(socket.SHUT_RDWR)
                x.close()
            except OSError:
                pass

    def restore(self):
        self.up = True

    def close(self):
        self.stop_ev.set()
        self.cut()
        self.srv.close()
        self.thread.join(timeout=5)


def rig_ap_control():
    """The rig's Wi-Fi/AP control (helper `clock`: Rig.set_ap), when this tree has it."""
    from fleet.sim import rig

    return getattr(rig.Rig, "set_ap", None)


def uplink_flap(workdir, period_s=10.0, duration_s=300.0, down_s=5.0, publish_every_s=0.5):
    """Every period_s for duration_s the gateway's connection is cut and stays down for down_s;
    the gateway publishes an envelope every publish_every_s throughout."""
    s = Setup(workdir)
    proxy = FlapProxy(s.broker.port)
    try:
        m = Mesh(s.home.keys())
        s.collector()
        s.gw = Gateway(proxy.port)
        start = time.monotonic()
        t_end = start + duration_s
        next_cut, down_until, t_up, before = start + period_s, None, None, 0
        cuts = 0
        recon = []
        t = int(time.time())
        while True:
            now = time.monotonic()
            if t_up is not None and s.gw.connects > before:
                recon.append(now - t_up)
                t_up = None
            if down_until is None and now >= t_end and t_up is None:
                break
            if down_until is None and now >= next_cut and now < t_end:
                before = s.gw.connects
                proxy.cut()
                cuts += 1
                down_until = now + down_s
                next_cut += period_s
            elif down_until is not None and now >= down_until:
                proxy.restore()
                down_until, t_up = None, now
            elif t_up is not None and now - t_up > 60:
                recon.append(None)
                t_up = None
            t += 1
            s.gw.publish(m.round(t, 1))  # also while the uplink is down: paho holds it, as the gateway does
            time.sleep(publish_every_s)
        mark_end = time.monotonic()
        s.gw.wait_acked(120)
        want = m.produced()
        wait_for(lambda: stored(s.home)[0] >= want, 120, "every reading is stored after the flapping")
        drain = time.monotonic() - mark_end
        pairs, count, _ = stored(s.home)
        ok = [r for r in recon if r is not None]
        return {
            "fault": f"gateway uplink cut every {period_s:g} s ({down_s:g} s down) for {duration_s:g} s "
                     f"(TCP proxy; broker kept running)",
            "published": len(want), "stored": count, "distinct": len(pairs), "lost": len(want - pairs),
            "duplicates_in_store": count - len(pairs), "cuts": cuts, "gateway_connects": s.gw.connects,
            "reconnect_max_s": round(max(ok), 2) if ok else None, "reconnects_failed": recon.count(None),
            "recovery_s": round(max(ok), 2) if ok else None,
            "recovery_what": "uplink back until the gateway reconnected (worst); all stored %.1f s after the end"
                             % drain,
            "gateway_state_lines": len(log_lines(s.log, 0, (f"gateway {GW} is ",))),
            "operator_saw": (log_lines(s.log, 0, (f"gateway {GW} is offline",))[:1]
                             + log_lines(s.log, 0, (f"gateway {GW} is online",))[1:2]),
            "status": fleet_status(s.home),
            "rig_ap_control": "present (Rig.set_ap)" if rig_ap_control() else
            "absent (helper clock's Rig.set_ap is not merged): the proxy variant ran instead",
        }
    finally:
        proxy.close()
        s.close()


def rig_uplink_flap(workdir, period_s=10.0, duration_s=300.0, down_s=5.0, nodes=6, offered_s=5):
    """The same flapping on the virtual rig with the real firmware: a 6-pole line (one gateway,
    real MicroPython nodes making a reading every offered_s seconds), the gateway's Wi-Fi access
    point switched off for down_s every period_s for duration_s (Rig.set_ap: its station drops,
    MQTT waits, envelopes queue in its outbox, it rejoins with backoff). Lost = readings the
    nodes made (their own console count) that are not stored once the last flap is over."""
    from fleet.sim import topology as topo_mod
    from fleet.sim.handle import RigHandle
    from fleet.sim.rig import RigOptions
    from fleet.sim.verify import delivery_report, made_by_node

    if rig_ap_control() is None:
        raise Skip("this tree's rig has no Wi-Fi access-point control (Rig.set_ap)")
    home = FleetHome(os.path.join(workdir, "home"))  # the rig makes its keys and registers its poles
    topo = topo_mod.line(nodes, spacing_m=35, n_gateways=1, seed=3)
    gw = topo.gateways()[0]
    opt = RigOptions(offered_interval_s=offered_s, offered_for_s=int(duration_s + 60), seed=3,
                     repair={"grace_s": 20})
    rig = RigHandle(home, topo, opt, log=lambda m: None)
    try:
        rig.start()
        wait_for(lambda: stored(home)[1] >= 2 * (nodes - 1), 180, "readings flowing before the flapping", 1.0)
        start = time.monotonic()
        cuts = 0
        while time.monotonic() - start < duration_s:
            rig.set_ap(gw, up=False)
            cuts += 1
            time.sleep(down_s)
            rig.set_ap(gw, up=True)
            time.sleep(max(0.0, period_s - down_s))
        t_end = time.monotonic()
        consoles = {nid: np.log_path for nid, np in rig.rig.nodes.items()}
        made = made_by_node(consoles)
        want = sum(len(v) for v in made.values())
        wait_for(lambda: delivery_report(home, made=made)["missing"] == 0, 240,
                 "every reading the nodes made is stored after the flapping", 2.0)
        recovery = time.monotonic() - t_end
        rep = delivery_report(home, made=made)
        with open(consoles[gw], errors="replace") as f:
            gw_log = f.read()
        joins = gw_log.count("joined the Wi-Fi network")
        saw = [ln.strip() for ln in gw_log.splitlines() if ln.startswith("wifi uplink lost")][:1] + \
              [ln.strip() for ln in gw_log.splitlines() if ln.startswith("wifi joined")][1:2]
        pairs, count, _ = stored(home)
        return {
            "fault": f"real gateway firmware: its Wi-Fi AP off {down_s:g} s every {period_s:g} s for {duration_s:g} s "
                     f"({nodes}-pole rig line, Rig.set_ap)",
            "published": want, "stored": count, "distinct": len(pairs), "lost": rep["missing"],
            "duplicates_in_store": rep["duplicates_stored"], "cuts": cuts, "gateway_joins": joins,
            "recovery_s": round(recovery, 1),
            "recovery_what": "end of the last flap until every reading the nodes made was stored",
            "operator_saw": saw or ["(no wifi line on the gateway console)"],
            "status": fleet_status(home),
            "rig_ap_control": "present (Rig.set_ap)",
        }
    finally:
        rig.stop()


SCENARIOS = {"kill": kill_mid_commit, "kill_amqtt": lambda w: kill_mid_commit(w, broker="amqtt"), "enospc": disk_full, "clock": clock_back, "flap": uplink_flap,
             "rig_flap": rig_uplink_flap}


def _cell(v):
    return "-" if v is None else str(v)


def table(results):
    lines = ["| fault | lost | what the operator saw | recovery |", "|---|---|---|---|"]
    for key, r in results.items():
        if "skipped" in r:
            lines.append(f"| {key} | - | skipped: {r['skipped']} | - |")
            continue
        lost = f"{r['lost']} of {r['published']} (stored {r['stored']}, {r['duplicates_in_store']} duplicate rows)"
        saw = " / ".join(r["operator_saw"]) + f" / fleet status: {' '.join(r['status'][1][:1])}"
        lines.append(f"| {r['fault']} | {lost} | {saw} | {_cell(r['recovery_s'])} s ({r['recovery_what']}) |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated: " + ",".join(SCENARIOS))
    ap.add_argument("--quick", action="store_true", help="flap for 60 s instead of 5 min")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    only = [x for x in a.only.split(",") if x] or list(SCENARIOS)
    results = {}
    for key in only:
        work = tempfile.mkdtemp(prefix=f"redmesh-fault-{key}-")
        kw = {"duration_s": 60.0} if (key in ("flap", "rig_flap") and a.quick) else {}
        try:
            results[key] = SCENARIOS[key](work, **kw)
        except Skip as e:
            results[key] = {"skipped": str(e)}
        except Exception as e:  # noqa: BLE001 - a failed scenario is a row of the table, not the end
            results[key] = {"skipped": f"FAILED: {type(e).__name__}: {e}"}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{key}: {json.dumps(results[key], default=str)}", flush=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
