"""The virtual rig: a radio medium, a broker, a collector and N real MicroPython node processes,
each running the real firmware under an ESP32-like heap with its own flash directory.

    rig = Rig(home, topology, RigOptions(...))
    await rig.start()          # keys, configs, medium, broker, collector, nodes
    await rig.run_for(60)      # progress lines; resets nodes as a board resets (see _watch)
    await rig.stop()           # every process it started, by PID

Fault hooks for HIL tests: kill_node / start_node, kill_broker / restart_broker, stop_collector /
start_collector (the in-process one), reflash_node
(a killed node's config and flash rewritten, e.g. into a rogue), set_ap (a gateway's Wi-Fi access
point down/up or on another channel), and the medium's own faults (rig.medium).

Wi-Fi: each gateway has a simulated access point, a control file `<rig dir>/wifi/<id>.ap`
holding "1 <channel>" (up) or "0 <channel>" (down), named in the gateway's config (sim.ap_file)
and read by its HAL (firmware/hal/sim.py). It starts up on the mesh's channel (RigOptions
wifi_up=False: down). From a shell: `echo "0 1" > <home>/sim/wifi/<id>.ap` drops it. Everything binds 127.0.0.1 only.
"""
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

from fleet.errors import FleetError
from fleet.sim import interp
from fleet.sim.interp import micropython_bin  # noqa: F401 - the one lookup, re-exported for tests

# Heaps in board KB (what a 32-bit ESP32 has; fleet/sim/interp.py scales them on a 64-bit
# interpreter and says why each is what it is).
_GATEWAY_HEAP = interp.GATEWAY_HEAP_KB
# Nodes start like boards (fleet/sim/node_fs/_rignode.py is their `machine` and start-up):
# "slot" runs the flash's boot.py then main.py (boot.py chooses the A/B slot), "plain" runs
# firmware.main from the build directory on the flash.
_NODE_FS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_fs")
_LAUNCH = ("import sys\nsys.path.insert(0, {shim!r})\nimport _rignode\nsys.path.pop(0)\n"
           "_rignode.boot(globals(), {cause}, {ctl!r}, {mode!r}, {build!r}, {flash!r})\n")
# machine.reset_cause() values of the ESP32 port (firmware/boot.py RESET_CAUSES names them)
PWRON_RESET, WDT_RESET, SOFT_RESET = 1, 3, 5
_CAUSE_NAMES = {PWRON_RESET: "PWRON_RESET", WDT_RESET: "WDT_RESET", SOFT_RESET: "SOFT_RESET"}


class RigOptions:
    """Knobs of a virtual rig; defaults suit `make demo` (readings every ~40 s)."""

    def __init__(self, broker_url=None, seed=1, heap=None, report_interval_s=40, continuous=True,
                 capture_path=None, collector=True, restart_crashed=True, sensor_noise_per_mille=5,
                 broker_kind="embedded", offered_interval_s=None, gateway_heap=_GATEWAY_HEAP,
                 offered_for_s=None, ota=False, ota_bundle=None, ota_settings=None,
                 ota_heap=None, repair=None, node_overrides=None, wifi_up=True, collector_procs=0,
                 node_config=None):
        self.broker_url = broker_url
        self.seed = seed
        self.heap = heap
        self.report_interval_s = report_interval_s
        self.continuous = continuous
        self.capture_path = capture_path
        self.collector = collector
        self.restart_crashed = restart_crashed
        self.sensor_noise_per_mille = sensor_noise_per_mille
        self.broker_kind = broker_kind
        self.offered_interval_s = offered_interval_s  # synthetic readings per node (verify throughput)
        self.gateway_heap = gateway_heap
        self.offered_for_s = offered_for_s  # stop the synthetic load this long after boot
        # OTA: nodes boot from A/B slots on their flash (boot.py + /active + /a/...) holding
        # ota_bundle (a bundle file path; default: the current source built as bseq 1, "1.0.0");
        # ota_settings: the config's sim.ota map (trial_ms, max_boots, OtaParams overrides)
        self.ota = ota
        self.ota_bundle = ota_bundle
        self.ota_settings = ota_settings
        # heaps (heap, ota_heap, gateway_heap) are board KB: see fleet/sim/interp.py; heap and
        # ota_heap None: RIG_NODE_HEAP_KB / RIG_OTA_NODE_HEAP_KB for nodes whose firmware is on
        # romfs partitions, the _FS_KB ones for firmware in flash directories
        self.ota_heap = ota_heap
        # the collector's gap repair (fleet.repair.RepairConfig keywords, e.g. grace_s): None keeps
        # the fleet home's settings (production defaults: a gap is first asked for after 120 s)
        self.repair = repair
        # Per-node departures from the provisioned flash, e.g. a rogue pole for a security test:
        # {node_id: {"config": {key: value}, "files": {flash path: bytes or None}}}. "config"
        # entries replace the generated config's top-level keys (values as dump_config takes
        # them: fleet_pub is 32 bytes); "files" are written over the provisioned files (None
        # removes one), e.g. another app in slot a with its /active pointer, or a bundle in the
        # OTA page store (ota/m, ota/p<i>). Applied when the rig first writes the node's flash.
        self.node_overrides = dict(node_overrides or {})
        # Top-level config keys for every node (before node_overrides), e.g. protocol timers a
        # board keeps at their defaults, shortened for a test: {"parent_report_delay_ms": 10000}.
        # Validated as `fleet provision` validates a board's config (firmware/config_check.py).
        self.node_config = dict(node_config or {})
        self.wifi_up = bool(wifi_up)  # the gateways' access points are up when the rig starts
        # N > 0: instead of the in-process collector, N `fleet collect --share rig` processes on the
        # home's store (city scale: a PostgreSQL store, a broker with shared subscriptions), started
        # before the nodes, each killable (Rig.collectors); `collector` must then be False
        self.collector_procs = int(collector_procs)
        if self.collector_procs and self.collector:
            raise ValueError("collector_procs replaces the in-process collector: give collector=False too")


class NodeProc:
    """One virtual node: a MicroPython process whose cwd is its flash directory, started like a
    board (mode "slot" or "plain", see _rignode.py), with its watchdog kept here.

    check(now) reads the node's control file (<flash>.machine) and says what the board would do:
    "reset" (machine.reset()), "soft" (sys.exit()), "wdt" (the watchdog expired), "panic" (the
    interpreter itself ended) or None (running, or idle at its REPL: `at_repl`)."""

    def __init__(self, node_id, flash_dir, build_dir, heap, log_path, mode="plain", romfs=None):
        self.mode = mode
        self.romfs = romfs  # the node's romfs partition file (plain nodes run their firmware from it)
        self.node_id = node_id
        self.flash_dir = flash_dir
        self.build_dir = build_dir
        self.heap = heap
        self.log_path = log_path
        self.ctl_path = flash_dir.rstrip("/") + ".machine"
        self.proc = None
        self.starts = 0
        self.killed = False  # killed on purpose: do not restart
        self.cause = PWRON_RESET
        self.causes = []  # the reset cause of every start, in order
        self.at_repl = False
        self._wdt_ms = 0
        self._wdt_seen = None
        self._wdt_fed_s = None

    def start(self, cause=PWRON_RESET, keep_wdt=False):
        """Start the interpreter with machine.reset_cause() == cause; the watchdog stops unless
        keep_wdt (a soft reset keeps it running, as on an ESP32)."""
        if not keep_wdt:
            self._wdt_ms, self._wdt_seen, self._wdt_fed_s = 0, None, None
        with open(self.ctl_path, "w") as f:
            f.write("run %d 0\n" % self._wdt_ms)
        self._wdt_seen = None
        code = _LAUNCH.format(shim=_NODE_FS, cause=int(cause), ctl=self.ctl_path, mode=self.mode,
                              build=self.build_dir, flash=self.flash_dir)
        log = open(self.log_path, "ab")
        mp = micropython_bin()
        env = dict(os.environ)
        env.pop(interp.ROMFS_ENV, None)
        if self.romfs:
            env[interp.ROMFS_ENV] = self.romfs
        self.proc = subprocess.Popen([mp, "-X", interp.heap_arg(self.heap, mp), "-c", code],
                                     cwd=self.flash_dir, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        log.close()
        self.starts += 1
        self.killed = False
        self.at_repl = False
        self.cause = cause
        self.causes.append(cause)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _read_ctl(self):
        try:
            with open(self.ctl_path) as f:
                parts = f.read().split()
            return parts[0], int(parts[1]), parts[2]
        except (OSError, ValueError, IndexError):
            return None  # absent, or caught half-written: next time

    def check(self, now_s=None):
        """What the board does now (see the class docstring); the caller acts on it."""
        now_s = time.monotonic() if now_s is None else now_s
        ctl = self._read_ctl()
        if ctl is not None:
            state, wdt_ms, feeds = ctl
            if wdt_ms and not self._wdt_ms:
                self._wdt_ms = wdt_ms
            if self._wdt_ms and (feeds != self._wdt_seen or self._wdt_fed_s is None):
                self._wdt_seen = feeds
                self._wdt_fed_s = now_s  # started or fed
            if state in ("reset", "soft"):
                return state
            self.at_repl = state == "repl"
        if self._wdt_ms and self._wdt_fed_s is not None and now_s - self._wdt_fed_s > self._wdt_ms / 1000:
            return "wdt"
        if self.proc is not None and not self.alive():
            return "panic"
        return None

    def kill(self, on_purpose=True):
        self.killed = on_purpose
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - n))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class Rig:
    def __init__(self, home, topology, options=None, log=None):
        self.home = home
        self.topo = topology
        self.opt = options or RigOptions()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.dir = os.path.join(home.path, "sim")
        self.medium = None
        self.broker = None
        self.broker_url = None
        self.nodes = {}
        self.romfs = None  # the romfs partition plain nodes boot from (None: from the build directory)
        self.romfs_slots = False  # OTA nodes' slots are romfs partitions (else flash directories)
        self.collector_task = None
        self.collector_stop = None
        self.collectors = []  # fleet collect processes (RigOptions.collector_procs)
        self.ingest = None
        self.started_s = None
        self._watch_task = None

    # ---- set-up -------------------------------------------------------------------------------

    def _ensure_keys(self):
        self.home.ensure()
        ks = self.home.keys()
        if not ks.exists():
            self.log("rig: fleet home %s has no keys yet: creating them (as `fleet keys init`)" % self.home.path)
            ks.init()
        return ks

    def _build(self):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "tools"))
        import mpy_build

        out = os.path.join(self.dir, "build")
        shutil.rmtree(out, ignore_errors=True)
        fails = mpy_build.build(out)
        if fails:
            raise FleetError("mpy-cross failed on: " + ", ".join(f for f, _ in fails))
        self.romfs = None
        if interp.has_romfs():  # plain nodes run the build from their romfs partition
            from fleet import romfs

            self.romfs = romfs.segment(romfs.image(out))
        return out

    def _ota_flash_files(self, ks):
        """The files of a freshly provisioned node booting the rig's v1 bundle from slot a."""
        from fleet import ota_bundle

        if self.opt.ota_bundle:
            bundle = ota_bundle.read_bundle(self.opt.ota_bundle, ks.public_key())
        else:
            bundle = ota_bundle.build_bundle(ota_bundle.compile_app(), 1, "1.0.0", ks.sign)
            if ota_bundle.last_seq(self.home) < 1:
                ota_bundle.record_seq(self.home, 1)
        self.ota_v1 = bundle
        self.romfs_slots = interp.has_romfs()  # slots are romfs partitions (_write_flash)
        return ota_bundle.initial_flash_files(bundle)

    def _slot_partitions(self, flash):
        """The paths of a node's two romfs partitions (slots a and b)."""
        return [flash.rstrip("/") + ".romfs_" + s for s in ("a", "b")]

    def _config_for(self, node, ks):
        from firmware.config_check import dump_config

        epoch = ks.epoch_state()["epoch"]  # a node started after `fleet keys rotate` gets that epoch's key
        cfg = {
            "config_version": 1, "node_id": node.id, "role": "gateway" if node.is_gateway else "node",
            "net_id": self.home.net_id, "node_key": ks.node_key(node.id),
            "mesh_key": ks.mesh_key(epoch), "mesh_epoch": epoch,
            "fleet_pub": ks.public_key(), "report_interval_s": self.opt.report_interval_s, "warmup_s": 30,
            "continuous": self.opt.continuous, "sensor": "pms5003t",
            "sim": {"medium_port": self.medium.port, "my_port": self.medium.port_for(node.id),
                    "mac": node.mac, "seed": self.opt.seed,
                    "sensor_noise_per_mille": self.opt.sensor_noise_per_mille},
        }
        if self.opt.ota_settings:
            cfg["sim"]["ota"] = dict(self.opt.ota_settings)
        if self.opt.offered_interval_s:
            cfg["sim"]["offered_interval_s"] = int(self.opt.offered_interval_s)
            if self.opt.offered_for_s:
                cfg["sim"]["offered_for_s"] = int(self.opt.offered_for_s)
        if not self.opt.continuous:
            cfg["sample_window_s"] = min(60, self.opt.report_interval_s - 30)
        if node.is_gateway:
            host, port = _host_port(self.broker_url)
            cfg["uplink"] = {"broker_host": host, "broker_port": port, "client_id": "gw-%d" % node.id}
            cfg["sim"]["ap_file"] = self.ap_path(node.id)
        cfg.update(self.opt.node_config)
        cfg.update(self.opt.node_overrides.get(node.id, {}).get("config") or {})
        return dump_config(cfg)

    def _write_flash(self, node, ks, files):
        """Write the node's config.cbor (0600), then `files` ({flash path: bytes}) and its
        node_overrides files (None removes a file)."""
        flash = os.path.join(self.dir, "nodes", str(node.id))
        os.makedirs(flash, exist_ok=True)
        with open(os.path.join(flash, "config.cbor"), "wb") as f:
            f.write(self._config_for(node, ks))
        os.chmod(os.path.join(flash, "config.cbor"), 0o600)
        files = dict(files or {})
        files.update(self.opt.node_overrides.get(node.id, {}).get("files") or {})
        if self.romfs_slots:  # slot a's files make its romfs partition; slot b is erased
            from fleet import romfs

            slot_a = {k[2:]: v for k, v in files.items() if k.startswith("a/") and v is not None}
            files = {k: v for k, v in files.items() if not k.startswith("a/")}
            parts = self._slot_partitions(flash)
            if slot_a or not all(os.path.exists(p) for p in parts):
                for p, data in zip(parts, (romfs.segment(romfs.image_of_files(slot_a)), romfs.erased()), strict=True):
                    with open(p, "wb") as f:
                        f.write(data)
        for rel, data in files.items():
            path = os.path.join(flash, rel)
            if data is None:
                if os.path.exists(path):
                    os.remove(path)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return flash

    def _register(self):
        store = self.home.store(create=True)
        try:
            now = int(time.time())
            store.register_nodes([{
                "node": n.id, "mac": n.mac.hex(), "role": "gateway" if n.is_gateway else "node",
                "pole": n.pole or None, "lat": n.lat, "lon": n.lon, "registered_at": now,
            } for n in self.topo.nodes])
        finally:
            store.close()

    async def _start_broker(self):
        from fleet.sim import broker as broker_mod

        if self.opt.broker_url:
            self.broker_url = self.opt.broker_url
            return
        logp = os.path.join(self.dir, "broker.log")
        if self.opt.broker_kind == "mosquitto":
            self.broker = await asyncio.to_thread(broker_mod.start_mosquitto, 0, "127.0.0.1")
        else:
            self.broker = await asyncio.to_thread(broker_mod.start_broker_process, 0, "127.0.0.1", logp)
        self.broker_url = "mqtt://127.0.0.1:%d" % self.broker.port
        # other commands on this home (fleet ota push/status, fleet collect) find the rig's broker
        self.home.write_config({"broker": {"url": self.broker_url}})

    async def _start_collector(self):
        from fleet.collector_mqtt import run_collector

        self.collector_stop = asyncio.Event()
        config = None
        if self.opt.repair:
            from fleet.collector import CollectorConfig

            config = CollectorConfig.from_home(self.home, **self.opt.repair)
        self.collector_task = asyncio.create_task(
            run_collector(self.home, self.broker_url, self.collector_stop, client_id="collector-sim", progress_s=0,
                          config=config))

    async def stop_collector(self, timeout_s=15.0):
        """Stop the in-process collector (it commits what it took and disconnects);
        start_collector() runs it again. A HIL fault: the fleet's side gone for a while."""
        if self.collector_task is None:
            raise FleetError("the rig runs no in-process collector (RigOptions collector=False)")
        self.collector_stop.set()
        task, self.collector_task, self.collector_stop = self.collector_task, None, None
        await asyncio.wait_for(task, timeout_s)

    async def start_collector(self):
        if self.collector_task is not None:
            raise FleetError("the rig's collector is running already")
        await self._start_collector()

    async def _start_collector_procs(self):
        from fleet.collector_mqtt import start_collector_process

        args = ["--share", "rig", "--store", self.home.store_url]
        flags = {"grace_s": "--gap-grace-s", "retry_s": "--resend-retry-s", "max_attempts": "--resend-attempts"}
        for k, v in (self.opt.repair or {}).items():
            if k not in flags:
                raise ValueError(f"collector processes take repair settings {sorted(flags)}, not {k!r}")
            args += [flags[k], str(v)]
        for i in range(self.opt.collector_procs):
            self.collectors.append(await asyncio.to_thread(
                start_collector_process, self.home.path, self.broker_url, extra_args=args,
                log_path=os.path.join(self.dir, f"collector{i}.log")))

    async def start(self):
        """Start everything; raises FleetError with what to do when a part cannot start."""
        from fleet.sim.medium import Medium

        os.makedirs(self.dir, exist_ok=True)
        ks = self._ensure_keys()
        build = await asyncio.to_thread(self._build)
        flash_files = await asyncio.to_thread(self._ota_flash_files, ks) if self.opt.ota else None
        self.medium = Medium(self.topo, seed=self.opt.seed, capture_path=self.opt.capture_path)
        await self.medium.start("127.0.0.1", 0)
        await self._start_broker()
        self._register()
        if self.opt.collector:
            await self._start_collector()
        if self.opt.collector_procs:
            await self._start_collector_procs()
        nodes_dir = os.path.join(self.dir, "nodes")
        for n in self.topo.nodes:
            if n.is_gateway:  # each gateway's access point, before the gateway boots
                self.set_ap(n.id, self.opt.wifi_up, self._radio_channel(n.id))
        for n in self.topo.nodes:
            flash = os.path.join(nodes_dir, str(n.id))
            fresh = flash_files is not None and not os.path.exists(os.path.join(flash, "active"))
            self._write_flash(n, ks, flash_files if fresh else None)
            if self.opt.ota:
                node_heap = self.opt.ota_heap or (interp.RIG_OTA_NODE_HEAP_KB if self.romfs_slots
                                                  else interp.RIG_OTA_NODE_HEAP_FS_KB)
            else:
                node_heap = self.opt.heap or (interp.RIG_NODE_HEAP_KB if self.romfs is not None
                                              else interp.RIG_NODE_HEAP_FS_KB)
            heap = self.opt.gateway_heap if n.is_gateway else node_heap
            mode = "slot" if flash_files is not None else "plain"
            rom = None
            if mode == "plain" and self.romfs is not None:
                rom = flash.rstrip("/") + ".romfs"  # the node's romfs partition
                with open(rom, "wb") as f:
                    f.write(self.romfs)
            elif mode == "slot" and self.romfs_slots:
                rom = ":".join(self._slot_partitions(flash))
            np = NodeProc(n.id, flash, build, heap, os.path.join(flash, "console.log"), mode=mode, romfs=rom)
            self.nodes[n.id] = np
        # gateways first, so the first beacons find a root
        order = sorted(self.topo.nodes, key=lambda n: (not n.is_gateway, n.id))
        for n in order:
            self.nodes[n.id].start()
        self.started_s = time.time()
        self._watch_task = asyncio.create_task(self._watch())
        self.log("rig: %d nodes (%d gateways), medium on udp %d, broker %s" % (
            len(self.topo.nodes), len(self.topo.gateways()), self.medium.port, self.broker_url))

    async def _watch(self):
        """Every second, do what a board does: machine.reset() and a watchdog that expires
        restart the node (with that reset cause, logged), so does an interpreter that dies (a
        panic); a node left at its REPL by an uncaught exception stays there (logged once).
        A node killed on purpose stays down; restart_crashed=False leaves every node as it is."""
        while True:
            await asyncio.sleep(1.0)
            for np in self.nodes.values():
                self.step_node(np)

    def step_node(self, np, now_s=None):
        """One watch step for node process `np`; returns what happened (see NodeProc.check)."""
        if np.proc is None or np.killed or not self.opt.restart_crashed:
            return None
        was_repl = np.at_repl
        what = np.check(now_s)
        if what is None:
            if np.at_repl and not was_repl:
                self.log("rig: node %d is at its REPL (the app ended, see its console.log); no watchdog "
                         "running, so it stays there as a board would" % np.node_id)
            return None
        if what == "soft":
            cause, keep, why = np.cause, True, "soft-reset itself (sys.exit)"
        elif what == "reset":
            cause, keep, why = SOFT_RESET, False, "reset itself (machine.reset)"
        elif what == "wdt":
            cause, keep, why = WDT_RESET, False, "was reset by its watchdog (not fed for %d ms)" % np._wdt_ms
        else:
            cause, keep, why = SOFT_RESET, False, "crashed (the interpreter ended, exit %s: a panic)" % (
                np.proc.returncode,)
        self.log("rig: node %d %s: restarting it, reset cause %s" % (np.node_id, why, _CAUSE_NAMES[cause]))
        np.kill(on_purpose=False)
        np.start(cause, keep_wdt=keep)
        return what

    # ---- faults ---------------------------------------------------------------------------------

    def kill_node(self, node_id):
        self.nodes[node_id].kill(True)
        if hasattr(self.medium, "kill_node"):
            self.medium.kill_node(node_id)

    def start_node(self, node_id):
        if hasattr(self.medium, "restart_node"):
            self.medium.restart_node(node_id)
        self.nodes[node_id].start()

    def reflash_node(self, node_id, overrides):
        """Rewrite a killed node's flash as a technician with a USB cable would: its config
        again (with overrides["config"]) and overrides["files"] (see RigOptions.node_overrides,
        which this replaces for the node). start_node boots it. Raises FleetError while the node
        runs."""
        np = self.nodes[node_id]
        if np.alive():
            raise FleetError("node %d is running: kill_node it before reflashing" % node_id)
        self.opt.node_overrides[node_id] = dict(overrides)
        node = next(n for n in self.topo.nodes if n.id == node_id)
        self._write_flash(node, self.home.keys(), None)

    def ap_path(self, node_id):
        """The control file of gateway node_id's simulated Wi-Fi access point."""
        return os.path.join(self.dir, "wifi", "%d.ap" % node_id)

    def set_ap(self, node_id, up=None, channel=None):
        """Bring gateway node_id's access point up or down and/or move it to another channel
        (None keeps what it is); returns (up, channel). The gateway's station drops when its AP
        goes down or changes channel, and must join again (firmware/gateway.py)."""
        cur_up, cur_ch = self.ap(node_id)
        up = cur_up if up is None else bool(up)
        channel = cur_ch if channel is None else int(channel)
        if not 1 <= channel <= 14:
            raise FleetError("Wi-Fi channel must be 1..14, got %d" % channel)
        path = self.ap_path(node_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (1 if up else 0, channel))
        os.replace(tmp, path)  # the HAL never reads half a file
        return up, channel

    def ap(self, node_id):
        """(up, channel) of gateway node_id's access point (down on the mesh's channel when the
        rig never wrote it)."""
        try:
            with open(self.ap_path(node_id)) as f:
                up, ch = f.read().split()
            return up == "1", int(ch)
        except (OSError, ValueError):
            return False, self._radio_channel(node_id)

    def _radio_channel(self, node_id):
        cfg = dict(self.opt.node_config)
        cfg.update(self.opt.node_overrides.get(node_id, {}).get("config") or {})
        return int(cfg.get("radio_channel", 1))

    def kill_broker(self):
        if self.broker is None:
            raise FleetError("the rig uses an external broker: it cannot kill it")
        self.broker.kill()

    def restart_broker(self):
        if self.broker is None:
            raise FleetError("the rig uses an external broker: it cannot restart it")
        self.broker.restart()

    # ---- running ---------------------------------------------------------------------------------

    def progress(self):
        store = self.home.store()
        try:
            s = store.summary()
        finally:
            store.close()
        alive = sum(1 for n in self.nodes.values() if n.alive())
        return {"elapsed_s": int(time.time() - (self.started_s or time.time())), "alive": alive,
                "nodes": len(self.nodes), "readings": s.get("readings", 0), "medium": self.medium.stats()}

    async def run_for(self, duration_s, every_s=10.0):
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            await asyncio.sleep(min(every_s, max(0.0, end - time.monotonic())))
            p = await asyncio.to_thread(self.progress)
            self.log("rig: t=%ds nodes alive %d/%d, readings stored %d" % (
                p["elapsed_s"], p["alive"], p["nodes"], p["readings"]))

    async def stop(self):
        """Stop every process this rig started (nodes by PID, broker, collector, medium)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        for np in self.nodes.values():
            np.kill(True)
        if self.collector_stop is not None:
            self.collector_stop.set()
            try:
                await asyncio.wait_for(self.collector_task, 15)
            except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - shutting down
                self.log("rig: collector stop: %s" % (e,))
        for cp in self.collectors:  # by PID: SIGTERM (they flush and let go), SIGKILL if they hang
            await asyncio.to_thread(cp.stop)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self.medium is not None:
            await self.medium.stop()


def _host_port(url):
    u = url
    if "://" in u:
        u = u.split("://", 1)[1]
    host, _, port = u.partition(":")
    return host or "127.0.0.1", int(port or 1883)
