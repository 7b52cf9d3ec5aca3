"""What a node does with a command it accepted (firmware/node.py Node.on_command checked its
tag or signature and its replay window first): resend readings, set a setting, report status,
answer a ping, change key epoch, reboot. Commands come a few times a day, so this module is
imported for one command and unloaded after it (Node.on_command); it works on the Node
(resend on any firmware/app.py NodeApp: the DES answers with it too).

Reply codes: 0 ok, 1 bad arguments or refused value, 2 unknown op or setting, 3 nothing held
for a resend (the result says why per range), 4 no wall time yet (the collector retries).
A resend whose readings are its whole answer (`answered`) gets no Reply: the readings say it."""
import asyncio

import protocol
from firmware import ring as ring_mod

_RESEND_FRAMES = 4  # an answer never queues more than this many frames in the router


async def run(node, cmd, log):
    """Carry out `cmd` on `node` and send its Reply (none for a reboot that happens)."""
    code, result = 0, []
    op = cmd.op
    if op == protocol.OP_RESEND and len(cmd.args) == 2:
        code, result = resend(node, cmd.args[0], cmd.args[1])[:2]
        if answered(node, cmd.args[0], cmd.args[1], code, result):
            log("cmd", "op=%d cseq=%d code=0 readings %d..%d, no reply" % (op, cmd.cseq, result[0], result[1]))
            node.heap_sample()
            return
    elif op == protocol.OP_SET and len(cmd.args) == 2:
        code = set_value(node, cmd.args[0], cmd.args[1], log)
    elif op == protocol.OP_STATUS:
        node.send_status()
    elif op == protocol.OP_PING:
        result = [node.now_ms() // 1000]
    elif op == 6 or op == 7:  # protocol.keywrap OP_REKEY, OP_EPOCH (issue 14)
        code, result = node._epoch_op(cmd)
    elif op == protocol.OP_REBOOT:
        node.send_reply(cmd.cseq, 0, [])
        await asyncio.sleep_ms(2000)
        node.shutdown_for_reset()
        node.hal.reset()
    else:
        code = 2
    log("cmd", "op=%d cseq=%d code=%d" % (op, cmd.cseq, code))
    node.send_reply(cmd.cseq, code, result)
    node.heap_sample()  # an answer (a resend: up to 4 frames) waits in the router's queue


def resend(node, a, b):
    """Answer "resend readings a..b" from the ring: (code, result, frames originated), result =
    [first, last] actually resent (at most 4 frames' worth), or with code 3 the ranges not held
    and why. The ring is read one frame's worth at a time, so the answer never holds more than
    a frame of readings in the heap. Code 4: no wall time yet (a frame's times are relative to
    it; the collector retries any code but 0 and 3). `node`: a firmware/app.py NodeApp (the
    node's shell, or the DES's)."""
    if not isinstance(a, int) or not isinstance(b, int) or b < a:
        return 1, [], 0
    if not node.wall_s():
        return 4, [], 0
    first = last = None
    left = _RESEND_FRAMES * protocol.MAX_READINGS
    lo = a
    frames = 0
    while left > 0 and lo <= b:
        held = node.ring.get_range(lo, b, min(left, protocol.MAX_READINGS))
        if not held:
            break
        made = ring_mod.build_telemetry(node.node_id, held, node.wall_s(), node.mesh_hmac, node.node_hmac)
        if made is None:
            break
        node.router.originate(made[0], node.now_ms(), None)
        frames += 1
        n = made[1]
        if first is None:
            first = held[0][0]
        last = held[n - 1][0]
        left -= n
        lo = last + 1
    if first is None:
        # nothing held: say why per range ("aged" out of the ring, "lost" in a power cut or
        # never issued after a reboot skip) so the collector closes the gap honestly
        result = []
        for glo, ghi, why in node.ring.gaps(a, b, 2):
            result.extend([glo, ghi, why])
        return 3, result[:8], 0
    return 0, [first, last], frames


def answered(node, a, b, code, result):
    """True when resend(node, a, b) gave (code, result) and the readings it resent are the whole
    answer: code 0, from a on, up to b or to the newest reading held (an overdue probe asks past
    it). A Reply would only repeat them - the collector closes gaps and lets probes go on the
    readings (fleet/repair.py) - and costs one frame up the whole path per repair: a third of a
    repair's transmissions (issue 15). A Reply is sent when it says more: readings no longer
    held (code 0 from later than a), the rest to ask for again (ended before b, below the
    newest: at most 4 frames per answer), nothing held (3), no time yet (4)."""
    if code or len(result) != 2 or result[0] != a:
        return False
    top = node.ring.newest_seq()
    return top is not None and result[1] >= (b if b < top else top)


def set_value(node, key, value, log):
    """OP_SET: a sampling setting (checked by SamplerConfig) or ota_allow (bundle seq)."""
    if key in ("report_interval_s", "warmup_s", "sample_window_s"):
        try:
            node.sampler.configure(node.sampler.config.replace(key, value))
        except ValueError as e:
            log("cmd", "set %s refused: %s" % (key, e))
            return 1
        return 0
    if key == "ota_allow":
        if node.ota is None or not isinstance(value, int) or value < 0:
            return 1
        node.ota.allow(value)  # may stage and reset the node (then there is no reply)
        return 0
    return 2
