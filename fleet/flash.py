"""Write a MicroPython ESP32 firmware image with esptool (as a library), after checking the chip.

Steps: check the image file (exists, an ESP image: first byte 0xE9, fits the flash); probe the
chip on the port through esptool's ROM bootloader protocol (chip type must be ESP32, flash size
read from the flash chip's JEDEC id); then `esptool.main([... "write-flash" ...])`, which writes,
verifies the MD5 of what it wrote and hard-resets the board into MicroPython.

The image is the user's file: nothing is downloaded. esptool's own output goes to stderr (stdout
carries data only). Both esptool entry points are injectable (`probe`, `esptool_main`) so tests
can record the invocation without a chip.
"""
import contextlib
import os
import sys
import time

from fleet.errors import FleetError

ESP_IMAGE_MAGIC = 0xE9
DEFAULT_ADDRESS = 0x1000  # the ESP32's second-stage bootloader offset: MicroPython's .bin starts there
DEFAULT_BAUD = 460800
PROBE_BAUD = 115200  # the ROM bootloader's speed; esptool switches up for the write


class FlashError(FleetError):
    """The image or the chip is not right for flashing; the message says what to do."""


def check_image(path, address=DEFAULT_ADDRESS):
    """Return {"path", "bytes"} of a plausible ESP32 image at `path`. Raises FlashError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as e:
        raise FlashError(f"cannot read the image {path}: {e.strerror}; give the MicroPython .bin you downloaded "
                         f"for ESP32 (micropython.org/download/ESP32_GENERIC)") from e
    if size == 0 or first[0] != ESP_IMAGE_MAGIC:
        raise FlashError(f"{path} is not an ESP32 firmware image (it does not start with the ESP image byte "
                         f"0xE9): give the MicroPython .bin for ESP32, not a .elf, .uf2 or archive")
    if size + address > 16 * 1024 * 1024:
        raise FlashError(f"{path} is {size // 1024} KB: too big for any ESP32 flash at {address:#x}")
    return {"path": os.path.abspath(path), "bytes": size}


def probe_chip(port, baud=PROBE_BAUD, connect_attempts=3):
    """Ask the ROM bootloader on `port` which chip it is; return (chip_name, flash_size_bytes or
    None). Raises FlashError when no ESP bootloader answers."""
    from esptool import cmds
    from esptool.util import FatalError, flash_size_bytes

    esp = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            esp = cmds.detect_chip(port=port, baud=baud, connect_attempts=connect_attempts)
            size = cmds.detect_flash_size(esp)
        return esp.CHIP_NAME, (flash_size_bytes(size) if size else None)
    except (FatalError, OSError) as e:
        raise FlashError(
            f"{port}: no ESP32 bootloader answered ({str(e).splitlines()[0]}). Hold the BOOT button, press EN "
            f"(reset), release BOOT and try again; check that the cable carries data and no serial monitor has the "
            f"port open. (A board already running MicroPython answers with its REPL, not the bootloader: "
            f"boards without auto-reset need the buttons.)"
        ) from e
    finally:
        if esp is not None:
            with contextlib.suppress(Exception):
                esp._port.close()


def esptool_argv(port, image_path, baud=DEFAULT_BAUD, address=DEFAULT_ADDRESS):
    """The esptool command line that writes `image_path` (esptool 5 spelling)."""
    return ["--chip", "esp32", "--port", port, "--baud", str(baud), "--before", "default-reset",
            "--after", "hard-reset", "write-flash", "--flash-size", "keep", f"{address:#x}", image_path]


def flash(port, image_path, *, baud=DEFAULT_BAUD, address=DEFAULT_ADDRESS, connect_attempts=3,
          probe=probe_chip, esptool_main=None):
    """Check the image and the chip, then write the image. Returns plain data: port, image, bytes,
    chip, flash size, baud, the esptool argv, elapsed seconds. Raises FlashError."""
    if not port:
        raise FlashError("give --port PORT (the board's serial port, e.g. /dev/ttyUSB0)")
    if baud not in (9600, 57600, 115200, 230400, 460800, 921600, 1500000, 2000000):
        raise FlashError(f"baud {baud} is not one esptool uses: try 460800 (or 115200 with a poor cable)")
    img = check_image(image_path, address)
    t0 = time.monotonic()
    chip, flash_bytes = probe(port, PROBE_BAUD, connect_attempts)
    if chip != "ESP32":
        raise FlashError(f"{port}: the chip is an {chip}, not an ESP32: Red Mesh nodes are ESP32 boards "
                         f"(an {chip} image and port are not supported)")
    if flash_bytes is not None and img["bytes"] + address > flash_bytes:
        raise FlashError(f"{port}: the image ({img['bytes'] // 1024} KB at {address:#x}) does not fit this board's "
                         f"{flash_bytes // (1024 * 1024)} MB flash: use the image for this flash size")
    argv = esptool_argv(port, img["path"], baud, address)
    if esptool_main is None:
        import esptool

        esptool_main = esptool.main
    from esptool.util import FatalError

    try:
        with contextlib.redirect_stdout(sys.stderr):
            esptool_main(argv)
    except (FatalError, OSError) as e:
        raise FlashError(f"{port}: esptool failed while writing ({str(e).splitlines()[0]}); the board may hold a "
                         f"partial image: run the same command again (lower --baud to 115200 on a long cable)") from e
    except SystemExit as e:
        raise FlashError(f"{port}: esptool stopped with status {e.code}; see its messages above") from e
    return {"port": port, "image": img["path"], "image_bytes": img["bytes"], "chip": chip,
            "flash_size_bytes": flash_bytes, "address": address, "baud": baud, "esptool_argv": argv,
            "elapsed_s": round(time.monotonic() - t0, 3)}
