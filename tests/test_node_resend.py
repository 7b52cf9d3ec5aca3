"""firmware/node_cmd.py resend answers "resend readings a..b" one frame's worth of ring readings at a time
(issue 10: the answer held 48 readings at once and a 128 KB 32-bit node failed there): the
frames it originates carry exactly the held readings of a..b, in order, at most 48, and the
reply says which it resent or why nothing is held. A gateway-role node, so the router hands every
originated frame back as an ("uplink", bytes, ...) event without a radio."""
import asyncio

import protocol
from firmware import node_cmd
from firmware.config import Config
from firmware.fsutil import PosixFS
from firmware.hal.simload import _Synthetic
from firmware.node import Node

NODE_KEY = bytes(range(32))
MESH_KEY = bytes(range(100, 132))


class _Hal:
    mac = b"\x02\x00\x00\x00\x00\x07"

    def __init__(self, root):
        self.fs = PosixFS(root)

    def mem_free(self):
        return 100000

    def time_s(self):
        return 1795000000


def _node(tmp_path):
    cfg = Config({"config_version": 1, "node_id": 7, "role": "gateway", "net_id": 1, "node_key": NODE_KEY,
                  "mesh_key": MESH_KEY, "fleet_pub": bytes(32), "continuous": True, "report_interval_s": 60,
                  "uplink": {"broker_host": "127.0.0.1"}})
    return Node(_Hal(str(tmp_path)), cfg)


def _frames(node):
    out = []
    while True:
        ev = node.router.poll_event()
        if ev is None:
            return out
        if ev[0] == "uplink":
            out.append(protocol.decode(ev[1], MESH_KEY, NODE_KEY))


def _seqs(frames):
    return [f.seq + i for f in frames for i in range(len(f.readings))]


def test_resend_answers_frame_by_frame_up_to_48_readings(tmp_path):
    node = _node(tmp_path)
    seqs = [node.ring.append(1795000000 - 1000 + i, _Synthetic(i)) for i in range(70)]
    _frames(node)
    code, result, n = node_cmd.resend(node, seqs[3], seqs[65])
    frames = _frames(node)
    assert code == 0 and result == [seqs[3], seqs[3] + 47] and n == len(frames)
    assert _seqs(frames) == list(range(seqs[3], seqs[3] + 48))
    assert len(frames) == 4 and all(len(f.readings) <= protocol.MAX_READINGS for f in frames)
    # a short range: exactly what it asks for
    code, result, _ = node_cmd.resend(node, seqs[10], seqs[14])
    assert code == 0 and result == [seqs[10], seqs[14]]
    assert _seqs(_frames(node)) == list(range(seqs[10], seqs[14] + 1))


def test_resend_of_nothing_held_says_why(tmp_path):
    node = _node(tmp_path)
    seqs = [node.ring.append(1795000000 - 100 + i, _Synthetic(i)) for i in range(5)]
    _frames(node)
    code, result, n = node_cmd.resend(node, seqs[-1] + 10, seqs[-1] + 20)
    assert code == 3 and result == [seqs[-1] + 10, seqs[-1] + 20, "ahead"] and n == 0
    assert _frames(node) == []
    assert node_cmd.resend(node, 5, 4) == (1, [], 0)



def test_a_resend_whose_readings_are_the_whole_answer_gets_no_reply(tmp_path):
    """node_cmd.run: the readings answer a resend of everything held from a up to b (or up to the
    newest: an overdue probe asks past it) - no Reply frame after them (issue 15: a third of a
    repair's transmissions). A Reply still comes when it says more: the rest to ask for again
    (48 per answer), nothing held."""
    node = _node(tmp_path)
    seqs = [node.ring.append(1795000000 - 1000 + i, _Synthetic(i)) for i in range(70)]
    _frames(node)
    logs = []

    def answer(a, b, cseq):
        cmd = protocol.Command(target=7, cseq=cseq, op=protocol.OP_RESEND, args=[a, b], auth=b"")
        asyncio.run(node_cmd.run(node, cmd, lambda tag, msg: logs.append(msg)))
        return [(f.type, f.seq, getattr(f, "code", None), getattr(f, "result", None)) for f in _frames(node)]

    T, R = protocol.T_TELEMETRY, protocol.T_REPLY
    assert [f[0] for f in answer(seqs[3], seqs[10], 1)] == [T]  # all of it: the readings say so
    assert [f[0] for f in answer(seqs[60], seqs[69] + 47, 2)] == [T]  # a probe past the newest
    got = answer(seqs[0], seqs[69], 3)  # 48 of 70: the reply says where the rest starts
    assert [f[0] for f in got] == [T] * 4 + [R] and got[-1][2:] == (0, [seqs[0], seqs[47]])
    got = answer(seqs[69] + 1, seqs[69] + 5, 4)  # nothing held: the reply says why
    assert [f[0] for f in got] == [R] and got[0][2] == 3
    assert "no reply" in logs[0] and "no reply" in logs[1] and "code=0" in logs[2]
