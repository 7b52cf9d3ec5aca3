"""The node's OTA shell wired in at boot (firmware/startup.py calls attach): when the app runs
from an A/B slot, the shell (firmware/ota_node.py), its page buffers and the factories of the
engine and the slot manager. Imported by every boot, kept only by a node that runs from a slot
(the factories below live as long as the shell); a node without slots unloads it.
"""
# The OTA target class of this firmware's hardware (the virtual rig's nodes stand in for ESP32
# poles, so they are "esp32" too): fleet/ota_bundle.py DEFAULT_TARGET
TARGET_CLASS = "esp32"
STAGE_GC_EVERY = 4096  # bytes allocated between collections while staging at boot (stage_early)


def _ota_settings(cfg):
    """OTA knobs: defaults, overridden on the virtual rig by the config's sim.ota map (a test
    speeds up Trickle or shortens the trial; a real node's config has no such key); the distrust
    of a bad sender is the config's ota_distrust_ms (checked by firmware/config.py)."""
    sim = getattr(cfg, "sim", None) or {}
    o = sim.get("ota") or {}
    trial = {"trial_ms": o.get("trial_ms", 600000), "max_boots": o.get("max_boots", 3)}
    params = {"distrust_ms": cfg.ota_distrust_ms}
    for k in ("adv_imin_ms", "adv_doublings", "tx_rate_per_s", "tx_burst", "req_delay_ms", "req_timeout_ms",
              "serve_delay_ms"):
        if k in o:
            params[k] = o[k]
    return trial, params


def _slot_manager(fs, trial):
    from firmware.slots import SlotManager

    return SlotManager(fs, max_boots=trial["max_boots"], trial_ms=trial["trial_ms"], target_class=TARGET_CLASS)


def _pointer(fs):
    from firmware import boot
    from firmware.compat import unload

    try:
        pointer = boot.read_pointer(fs)
    except ValueError:
        pointer = None
    boot = None
    unload("firmware.boot")
    return pointer


def _prep(fs):
    """None when the app does not run from an A/B slot; otherwise the slot pointer and the OTA
    engine's buffers, each in one piece: a page to receive into, a page to send from and a buffer
    for a manifest of several units."""
    pointer = _pointer(fs)
    if pointer is None:
        return None
    import protocol
    from protocol.manifest import MAX_SIGNED

    n = protocol.OTA_PKTS_PER_PAGE * protocol.OTA_PKT_MAX
    return {"pointer": pointer, "rx": bytearray(n), "tx": bytearray(n), "mb": bytearray(MAX_SIGNED)}


def prepare(cfg, fs):
    """At boot, right after the config was read, before the HAL, the radio's ring and the node
    take the heap: None when the app does not run from an A/B slot; otherwise the slot pointer
    and the OTA engine's buffers, allocated here at the bottom of the heap and kept for the
    node's life (asked for after the node was built, the 8 KB manifest buffer did not fit a 123k
    heap that had 21 KB free in pieces: bench/ota_heap_bench.py). Then stages a bundle that is
    ready to install (stage_early), with these buffers."""
    prep = _prep(fs)
    if prep is not None:
        stage_early(cfg, fs, prep)
    return prep


def attach(node, cfg, fs, gateway, prep=None):
    """Give the node its OTA shell when the app runs from an A/B slot (a /active pointer on
    the flash); without one (run from a build directory, tests) OTA stays off, logged. `prep`:
    what prepare() returned at boot (None: allocated here, as tests do). The shell builds the
    engine and the slot manager only while it needs them (firmware/ota_node.py)."""
    if prep is None:
        prep = _prep(fs)
    if prep is None:
        print("ota", "disabled: no A/B slot pointer on this flash (app not run from a slot)")
        return
    pointer = prep["pointer"]
    rx = prep["rx"]
    tx = prep["tx"]
    mb = prep["mb"]
    prep = None
    # the engine's modules first, as the node's last big imports: the shell drops and reloads
    # them later, but their bytecode (and the interned names) are best placed on a fresh heap
    import firmware.ota  # noqa: F401
    import firmware.ota_store  # noqa: F401
    from firmware.ota_node import OtaShell

    trial, params = _ota_settings(cfg)
    # this hardware class: bundles built for another (fleet ota build --target-class) are refused
    # by the engine (not stored or forwarded) and by the slot manager (never staged)
    params["target_class"] = TARGET_CLASS

    def make_slots():
        return _slot_manager(fs, trial)

    def make_air(carry, floor):
        from firmware.ota import OtaAir, OtaEngine, OtaParams
        from firmware.ota_store import PageStore

        p = OtaParams(**params)
        if carry is not None:
            p.reverify_stored = False  # checked at boot or when it arrived, by this very boot
        engine = OtaEngine(cfg.node_id, cfg.fleet_pub, PageStore(fs, "ota"), cfg.node_id ^ (node.boot_count << 8),
                           p, running_bseq=floor, now_ms=node.now_ms(), carry=carry, rx=rx, tx=tx, mb=mb)
        return OtaAir(engine, cfg.mesh_key)

    shell = OtaShell(node, make_air, make_slots, cfg.mesh_key, print)
    node.ota = shell
    try:
        shell.maybe_stage(at_boot=True)  # complete and allowed before a reset: stage on a fresh heap
    except Exception as e:  # noqa: BLE001 - nothing a bundle carries may make a boot raise (issue 16)
        print("ota", "staging at boot failed, the bundle is left aside: %r" % (e,))
    if gateway is not None:
        from firmware.gateway import OtaSeedSink

        gateway.ota_sink = OtaSeedSink(shell, node)
    print("ota", "slot %s bseq %d version %s state %s" % (pointer["slot"], node.fw_seq, node.fw_version,
                                                         pointer["state"]))


def _looks_complete(store, buf, floor, allowed):
    """Whether the page store holds a bundle worth checking for staging: a manifest (read into
    `buf`, parsed in place and not yet verified) newer than `floor`, allowed, with a file of the
    right size for every page. Cheap: no signature check and no page hashing, which the engine
    does next; a boot with a download in progress used to verify the manifest here, and the
    Ed25519 code's leftovers kept the node's own import from fitting a 123k heap."""
    from protocol import ProtocolError
    from protocol.manifest import manifest_view, parse_manifest

    n = store.read_manifest_into(buf)
    if n <= 0 or n == len(buf):
        return n == len(buf)  # none, or longer than any signed manifest: let the engine say
    try:
        m = parse_manifest(manifest_view(memoryview(buf)[:n]), None, False)
    except (ProtocolError, ValueError):
        return False  # the engine's own resume drops it
    if not floor < m.bseq <= allowed:
        return False
    for i in range(m.npages):
        if store.page_length(i) != m.page_len(i):
            return False
    return True


def stage_early(cfg, fs, prep):
    """At boot, before the HAL, the radio's ring and the node take the heap (prepare): when the
    page store holds a complete bundle newer than the running slot and allowed by the fleet,
    stage it into the other slot and reset into its trial. Returns when there is nothing to
    stage, having unloaded what it imported; a failure is logged and left to the node's own
    staging (firmware/ota_node.py maybe_stage), which reports it and gives up on a bundle after
    MAX_STAGE_RESETS resets. Staged after the HAL and the radio's ring, a 123k heap had 33 KB
    free in pieces and the inflate window (1 KB) did not fit on some nodes of the 25-node rig:
    each of them reset into a failed staging for ever."""
    import gc

    p = prep["pointer"]
    if p["state"] == "trial":
        return
    from firmware.counters import Counters

    allowed = Counters(fs, "counters.bin").peek("ota_allow")
    floor = max(p["bseq"], p.get("failed", 0))
    if allowed <= floor:
        return  # the usual boot: nothing the fleet allows beyond what runs (or failed)
    from firmware.compat import unload
    from firmware.ota_store import PageStore

    store = PageStore(fs, "ota")
    slot = m = None
    if _looks_complete(store, prep["mb"], floor, allowed):
        # collect every few KB while staging: garbage left to pile up until the heap is full
        # spreads what stays alive over the whole heap, and at one heap size (123k, 4 nodes of
        # 8 on the rig) no 1 KB piece was left for the inflate window with 40 KB free
        threshold = getattr(gc, "threshold", None)  # MicroPython's (CPython's gc has none)
        if threshold is not None:
            threshold(STAGE_GC_EVERY)
        try:
            slot, m = _stage_from(cfg, fs, store, floor, allowed, prep)
        except Exception as err:  # noqa: BLE001 - SlotError, MemoryError, a bad store: the node's staging decides
            print("ota", "early staging did not happen (%s): the node stages at boot" % (err,))
        if threshold is not None:
            threshold(-1)  # back to collecting only when the heap is full
    # else a download in progress (or none): the engine and its signature check wait for the node
    if slot is None:
        store = m = None
        unload("firmware.ota", "firmware.ota_store", "protocol.manifest", "firmware.slots")
        gc.collect()
        return
    print("ota", "staged bseq %d version %s in slot %s before the node started: resetting into the trial"
          % (m.bseq, m.version, slot))
    from firmware import boot

    boot.clear_crashes(fs)  # a planned reset, as the HALs' reset()
    boot.hard_reset()


def _stage_from(cfg, fs, store, floor, allowed, prep):
    """stage_early's work once the store looks complete: (slot, manifest) when staged, else
    (None, None). Its engine checks the signature and every page."""
    import gc

    from firmware.ota import OtaEngine, OtaParams

    trial, params = _ota_settings(cfg)
    params["target_class"] = TARGET_CLASS
    rx = prep["rx"]
    e = OtaEngine(cfg.node_id, cfg.fleet_pub, store, cfg.node_id, OtaParams(**params), running_bseq=floor,
                  now_ms=0, rx=rx, mb=prep["mb"])
    if not e.complete() or not floor < e.m.bseq <= allowed:
        return None, None
    m = e.stage_manifest()
    e = None
    gc.collect()

    def read_page(i):
        n = store.read_page_into(i, rx)
        return None if n < 0 else memoryview(rx)[:n]

    return _slot_manager(fs, trial).stage(m, read_page), m
