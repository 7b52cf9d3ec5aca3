"""Reading times as operators type them (unix seconds, relative, ISO 8601): shared by the command
line (fleet/cli/_options.py TimeParam) and the served pages (fleet/web/app.py)."""
import datetime as dt
import re

U32_MAX = 0xFFFFFFFF
_RELATIVE = re.compile(r"^-?(\d{1,12}(?:\.\d{1,6})?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TIME_RANGE = "1970-01-01 .. 2106-02-07 (unix seconds 0..4294967295, what the protocol carries)"


def parse_time(text, now_s):
    """Parse a time given as unix seconds ('1718000000'), relative to now ('-1h', '-30m',
    '2d'), or ISO 8601 ('2024-06-10T08:00', '2024-06-10T08:00:00Z'; without an offset it is
    local time). Returns unix seconds (int) in 0..2**32-1 (unix-s on the wire). Raises
    ValueError with the accepted forms."""
    t = text.strip()
    when_s = None
    if re.fullmatch(r"\d{1,12}(\.\d{1,6})?", t):
        when_s = int(float(t))
    elif re.fullmatch(r"\d+(\.\d+)?", t):
        raise ValueError(f"{text!r} is out of range: times are {TIME_RANGE}")
    else:
        m = _RELATIVE.match(t)
        if m:
            when_s = int(now_s - float(m.group(1)) * _UNIT_S[m.group(2)])
    if when_s is None:
        try:
            when = dt.datetime.fromisoformat(t)
            if when.tzinfo is None:
                when = when.astimezone()  # naive = local time
            when_s = int(when.timestamp())
        except (ValueError, OverflowError, OSError):
            raise ValueError(
                f"cannot read {text!r} as a time: use unix seconds (1718000000), a relative time "
                f"(-90s, -30m, -1h, -2d, -1w) or ISO 8601 (2024-06-10T08:00:00Z)"
            ) from None
    if not 0 <= when_s <= U32_MAX:
        raise ValueError(f"{text!r} is out of range: times are {TIME_RANGE}")
    return when_s
