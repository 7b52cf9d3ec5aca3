"""Headless Chromium for the map tests: Debian's `chromium`, started by PID, always stopped.

`shoot(url, png, size)` takes a screenshot; `dump_dom(url)` returns the DOM after the page's
scripts ran. Each run has its own profile directory and a hard timeout; the process group is
killed by PID in every case. No chromium on the machine: the tests skip with the reason
(`.ci/run` installs it)."""
import os
import shutil
import signal
import subprocess
import tempfile

TIMEOUT_S = 60


def chromium():
    """Path of the chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _run(extra, url, timeout_s=TIMEOUT_S):
    exe = chromium()
    assert exe, "chromium is not installed"
    with tempfile.TemporaryDirectory(prefix="redmesh-chromium-") as profile:
        argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--force-device-scale-factor=1",
                f"--user-data-dir={profile}"] + extra + [url]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout_s)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        return p.returncode, out


def shoot(url, png, size=(1000, 700)):
    rc, _ = _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={png}"], url)
    assert os.path.exists(png), f"chromium made no screenshot (exit {rc})"


def dump_dom(url, size=(1000, 700)):
    rc, out = _run([f"--window-size={size[0]},{size[1]}", "--dump-dom"], url)
    assert rc == 0, f"chromium --dump-dom exited {rc}"
    return out.decode("utf-8", "replace")
