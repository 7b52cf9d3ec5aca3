"""What a provisioning run is given and says: the steps, the boards (NodeSpec), the run's
settings (ProvisionOptions) and its error (ProvisionError). See fleet/provision/__init__.py."""
from dataclasses import dataclass, field

from fleet.errors import FleetError
from fleet.mpboard import DEFAULT_BAUD

SLOTS = ("a", "b")
ROLES = ("node", "gateway")
SENSORS = ("pms5003", "pms5003t", "sds011")
DEFAULT_ARCH = "xtensawin"  # ESP32; no file uses @native, so the bytes are the same for any arch
ROOT_FILES = ("/boot.py", "/main.py", "/config.cbor")
STEPS = ("connect", "detect", "check", "copy", "verify", "commit", "reset", "selftest", "register")
_BEFORE_COMMIT = ("connect", "detect", "check", "copy", "verify")


class ProvisionError(FleetError):
    """Provisioning of one board failed at `step`; the message says what to do next."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


@dataclass
class NodeSpec:
    """One board to provision. `port` or `mac` locates it; `row` is its CSV line, if any."""

    node_id: int
    port: str | None = None
    mac: str | None = None
    role: str = "node"
    pole: str | None = None
    lat: float | None = None
    lon: float | None = None
    sensor: str = "pms5003"
    sim_port: int | None = None
    row: int | None = None

    def where(self):
        return f"row {self.row}" if self.row is not None else (self.port or self.mac or f"node {self.node_id}")


@dataclass
class ProvisionOptions:
    """Settings shared by every board of a run (None: the config default / fleet.toml)."""

    replace: bool = False
    selftest: bool = True
    selftest_timeout_s: float | None = None  # None: warmup_s + 60 s
    report_interval_s: int | None = None
    warmup_s: int | None = None
    sample_window_s: int | None = None
    continuous: bool | None = None
    radio_channel: int | None = None
    broker_url: str | None = None  # gateways; None: fleet.toml [broker] url
    wifi_ssid: str | None = None  # gateways; None: fleet.toml [uplink] wifi_ssid
    wifi_password: str | None = None  # gateways; None: fleet.toml [uplink] wifi_password
    sim_medium_port: int | None = None  # virtual boards: add the `sim` section
    baud: int = DEFAULT_BAUD
    arch: str = DEFAULT_ARCH
    chunk_bytes: int = 4096
    connect_timeout_s: float = 15.0
    extra_files: dict = field(default_factory=dict)  # slot path -> bytes, replacing build files (tests)
