"""Headless Chromium for tests: screenshots and the DOM after scripts ran, one process per
call, started in its own session, waited on with a timeout and stopped by PID."""
import os
import shutil
import signal
import subprocess

import pytest


def chromium_path():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def need_chromium():
    p = chromium_path()
    if p is None:
        pytest.skip("no chromium (Debian package `chromium`; .ci/run installs it)")
    return p


def run_chromium(args, profile_dir, timeout_s=60):
    """Run headless chromium with `args`; return its stdout (bytes). Stopped by PID on timeout."""
    cmd = [need_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--force-device-scale-factor=1", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile_dir}", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise AssertionError(f"chromium did not finish within {timeout_s} s") from None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    return out


def screenshot(url, png, profile_dir, size=(800, 600)):
    run_chromium([f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", url], profile_dir)
    assert os.path.exists(png), "chromium wrote no screenshot"
    from PIL import Image

    return Image.open(png).convert("RGB")


def dump_dom(url, profile_dir, size=(800, 600)):
    return run_chromium([f"--window-size={size[0]},{size[1]}", "--dump-dom", url], profile_dir).decode("utf-8", "replace")
