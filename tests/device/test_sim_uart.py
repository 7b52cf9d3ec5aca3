# The virtual rig's sensor UART (firmware/hal/sim.py SimUart) reads like a real UART: it waits
# for bytes, and a sleeping PMS5003 sends none. Runs on CPython (pytest) and MicroPython.
import asyncio

from firmware.compat import ticks_diff, ticks_ms
from firmware.drivers import command_bytes
from firmware.drivers.pms5003 import PMS5003Parser
from firmware.hal.sim import SimUart
from firmware.hal.simsensor import SimPMS5003

_WAIT_MS = 1500


async def _wait_ms(aw, ms):
    if hasattr(asyncio, "wait_for_ms"):
        return await asyncio.wait_for_ms(aw, ms)
    return await asyncio.wait_for(aw, ms / 1000)


async def _read_frames(uart, parser, want, timeout_ms):
    got = []
    start = ticks_ms()
    while len(got) < want and ticks_diff(ticks_ms(), start) < timeout_ms:
        got.extend(parser.feed(await uart.read_some(timeout_ms)))
    return got


async def _sleeping_sensor_sends_nothing():
    uart = SimUart(SimPMS5003(3, 9, noise_per_mille=0))
    parser = PMS5003Parser()
    assert len(await _read_frames(uart, parser, 1, 5000)) >= 1  # awake, active mode: a frame a second
    uart.write(command_bytes("pms5003", "sleep"))
    await uart.read_some(_WAIT_MS)  # the sensor's reply to the command (and a frame it had sent)
    start = ticks_ms()
    assert await uart.read_some(_WAIT_MS) == b""  # asleep: nothing until the timeout ...
    assert ticks_diff(ticks_ms(), start) >= _WAIT_MS - 5
    try:  # ... and without one, the read does not come back at all
        out = await _wait_ms(uart.read_some(), _WAIT_MS)
    except asyncio.TimeoutError:
        out = None
    assert out is None, out
    uart.write(command_bytes("pms5003", "wake"))  # the fan starts; frames again after a second
    assert len(await _read_frames(uart, parser, 1, 5000)) >= 1


def test_read_waits_while_the_sensor_sleeps():
    asyncio.run(_sleeping_sensor_sends_nothing())
