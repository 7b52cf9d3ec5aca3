# firmware/hal/esp32.py's _Uart under MicroPython's asyncio, over a stand-in for machine.UART
# that is readable only when it holds data (a non-blocking UDP socket on loopback), as a UART
# wired to a sleeping PMS5003 is: a read with a timeout comes back empty, one without never
# comes back, and a read cancelled by its timeout loses nothing that arrives later.
# MicroPython only (asyncio.StreamReader over a socket, sys.modules stand-ins for the board's
# machine and network); on CPython the body returns at once.
import sys

_PORT0 = 47700


class _Stand:
    pass


def _fake_board(port):
    import socket

    def uart(*args, **kw):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        s.setblocking(False)
        return s

    machine = _Stand()
    machine.UART = uart
    return machine


async def _uart_reads(uart, port):
    import asyncio
    import socket
    import time

    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dst = socket.getaddrinfo("127.0.0.1", port)[0][-1]
    try:
        t = time.ticks_ms()
        # the outer wait_for bounds the test itself, should read_some ignore its timeout
        assert await asyncio.wait_for_ms(uart.read_some(300), 3000) == b""  # nothing sent: empty
        assert time.ticks_diff(time.ticks_ms(), t) >= 295
        tx.sendto(b"\x42\x4d-frame", dst)
        assert await asyncio.wait_for_ms(uart.read_some(300), 3000) == b"\x42\x4d-frame"
        try:
            out = await asyncio.wait_for_ms(uart.read_some(), 500)  # no timeout: waits for good
        except asyncio.TimeoutError:
            out = None
        assert out is None, out
        tx.sendto(b"after", dst)  # the cancelled reads left the stream usable
        assert await asyncio.wait_for_ms(uart.read_some(300), 3000) == b"after"
    finally:
        tx.close()


def test_uart_read_times_out_while_the_sensor_is_silent():
    if sys.implementation.name != "micropython":
        return
    import asyncio

    saved = {k: sys.modules.get(k) for k in ("machine", "network", "firmware.hal.esp32")}
    port = _PORT0 + (id(saved) >> 4) % 200  # another port per run: a stale socket cannot collide
    sys.modules["machine"] = _fake_board(port)
    sys.modules["network"] = _Stand()
    try:
        from firmware.hal.esp32 import _Uart

        asyncio.run(_uart_reads(_Uart(1, 17, 16, 9600), port))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
