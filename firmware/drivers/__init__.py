"""Sensor frame parsers (sans-IO): bytes in, `SensorSample`s out.

Each driver module holds a parser class with `feed(data) -> list of SensorSample` and the
command frames the shell writes to the sensor's UART. Nothing here touches a UART or a clock.

Kinds: "pms5003" (Plantower PMS5003), "pms5003t" (PMS5003T, adds temperature and humidity),
"sds011" (Nova SDS011, no PM1).
"""

KINDS = ("pms5003", "pms5003t", "sds011")


class SensorSample:
    """One valid sensor frame, in project units.

    pm1, pm25, pm10: mass concentration in 0.1 ug/m3 (int; pm1 is None for sensors without it);
    rh: relative humidity in % (int) or None; temp: temperature in 0.1 C (int) or None.
    """

    def __init__(self, pm1, pm25, pm10, rh=None, temp=None):
        self.pm1 = pm1
        self.pm25 = pm25
        self.pm10 = pm10
        self.rh = rh
        self.temp = temp

    def __eq__(self, other):
        return (
            isinstance(other, SensorSample)
            and self.pm1 == other.pm1
            and self.pm25 == other.pm25
            and self.pm10 == other.pm10
            and self.rh == other.rh
            and self.temp == other.temp
        )

    def __repr__(self):
        return "SensorSample(pm1=%r, pm25=%r, pm10=%r, rh=%r, temp=%r)" % (
            self.pm1, self.pm25, self.pm10, self.rh, self.temp)


def make_parser(kind):
    """Return a new parser for sensor `kind` (one of KINDS); raises ValueError otherwise."""
    # Imported here so a node loads only the driver it uses.
    if kind == "pms5003" or kind == "pms5003t":
        from firmware.drivers.pms5003 import PMS5003Parser

        return PMS5003Parser(th=(kind == "pms5003t"))
    if kind == "sds011":
        from firmware.drivers.sds011 import SDS011Parser

        return SDS011Parser()
    raise ValueError("sensor kind must be one of %s, got %r" % (", ".join(KINDS), kind))


def command_bytes(kind, action):
    """Return the UART bytes that carry out a sampler action for sensor `kind`.

    action is an action name from the sampler ("wake", "sleep") or a driver command
    ("active", "passive", "read"). Returns None when the sensor needs no bytes for it.
    Raises ValueError for an unknown kind.
    """
    if kind == "pms5003" or kind == "pms5003t":
        from firmware.drivers import pms5003 as mod
    elif kind == "sds011":
        from firmware.drivers import sds011 as mod
    else:
        raise ValueError("sensor kind must be one of %s, got %r" % (", ".join(KINDS), kind))
    return mod.ACTION_BYTES.get(action)
