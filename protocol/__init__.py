"""Red Mesh wire protocol: the one definition of every byte on the air and on MQTT.

Public API (identical on MicroPython and CPython):
    encode(frame, mesh_key=None, node_key=None) -> bytes
    decode(buf, mesh_key=None, node_key=None) -> frame      (raises only ProtocolError)
    peek_type(buf) -> int
    ProtocolError
and the frame classes below. The normative spec is protocol/redmesh.cddl.

A node imports this package for its air frames only. The MQTT messages (Envelope, Downlink)
have their codec in protocol/envelope.py, the OTA frames (OtaAdvert, OtaRequest, OtaData)
theirs in protocol/frames_ota.py: the host gets them here; on MicroPython a gateway imports
protocol.envelope itself and the OTA code protocol.frames_ota.
"""
import sys

from protocol.errors import ProtocolError  # noqa: F401
from protocol.frames import (  # noqa: F401
    BF_GATEWAY,
    BF_NO_ROUTE,
    BF_PULL,
    COST_INFINITE,
    MAX_ENVELOPE,
    MAX_FRAME,
    MAX_READINGS,
    OP_PING,
    OP_REBOOT,
    OP_RESEND,
    OP_SET,
    OP_STATUS,
    OTA_PKT_MAX,
    OTA_PKTS_PER_PAGE,
    T_BEACON,
    T_COMMAND,
    T_DOWNLINK,
    T_ENVELOPE,
    T_OTA_ADV,
    T_OTA_DATA,
    T_OTA_REQ,
    T_REPLY,
    T_ROUTED,
    T_STATUS,
    T_TELEMETRY,
    TYPE_NAMES,
    VERSION,
    Beacon,
    Command,
    Reading,
    Reply,
    Status,
    StatusBody,
    Telemetry,
    decode,
    encode,
    peek_type,
    signed_bytes,
)

if sys.implementation.name != "micropython":  # the host: every message
    from protocol.envelope import Downlink, Envelope  # noqa: F401
    from protocol.frames_ota import OtaAdvert, OtaData, OtaRequest  # noqa: F401
