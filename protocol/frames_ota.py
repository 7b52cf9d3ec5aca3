"""The OTA frames (Deluge-style dissemination, firmware/ota.py): one-hop frames laid out as
protocol/frames.py says ([version, type, fields..., hop tag]); encoded and decoded by
protocol.encode/decode. In their own module so that a node imports them only when it runs an
OTA campaign (~1.5 KB of a 112 KB board heap); the host's `protocol` package exports them."""
from protocol.frames import OTA_PKTS_PER_PAGE, T_OTA_ADV, T_OTA_DATA, T_OTA_REQ, U16, U32, Frame


class OtaAdvert(Frame):
    """OTA advertisement (Deluge summary): src; bseq (bundle sequence number); mlen (signed
    manifest length in bytes); mid (first 4 bytes of SHA-256 of the signed manifest, as an int);
    npages (image pages); have (pages complete and verified, in order, counting the manifest
    as page 0: have = npages + 1 means complete)."""

    type = T_OTA_ADV
    SPEC = (("src", 0, U32), ("bseq", 0, U32), ("mlen", 0, U16), ("mid", 0, U32), ("npages", 0, U16),
            ("have", 0, U16))
    FIELDS = ("src", "bseq", "mlen", "mid", "npages", "have")


class OtaRequest(Frame):
    """Ask neighbour dst for packets of one page: missing is a bitmap of packet indices."""

    type = T_OTA_REQ
    SPEC = (("src", 0, U32), ("dst", 0, U32), ("bseq", 0, U32), ("page", 0, U16), ("missing", 0, U16))
    FIELDS = ("src", "dst", "bseq", "page", "missing")


class OtaData(Frame):
    """One packet of a page, broadcast: src, bseq, page (0 = the signed manifest, 1.. image),
    pkt (0..15), data (1..224 bytes)."""

    type = T_OTA_DATA
    SPEC = (("src", 0, U32), ("bseq", 0, U32), ("page", 0, U16), ("pkt", 0, OTA_PKTS_PER_PAGE - 1))
    FIELDS = ("src", "bseq", "page", "pkt", "data")
    DEFAULTS = {"data": b""}


OTA_FRAMES = {T_OTA_ADV: OtaAdvert, T_OTA_REQ: OtaRequest, T_OTA_DATA: OtaData}
