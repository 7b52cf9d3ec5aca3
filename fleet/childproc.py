"""A child process that a tool or a test owns and must stop by its PID: the one base of the
broker and collector processes (fleet/sim/broker.py, fleet/collector_mqtt.py)."""
import contextlib
import os
import subprocess


class ChildProcess:
    """`.proc` (set by the subclass's start), `.pid`, `.alive()`, `.stop()` (SIGTERM, then SIGKILL
    after a timeout), `.kill()` (SIGKILL, like a crash), `.log_tail()`, and `.close()`: stop it and
    remove the log file when this object made it (`owns_log`)."""

    def __init__(self, log_path=None, owns_log=False):
        self.proc = None
        self.log_path = log_path
        self._owns_log = owns_log

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s=15.0):
        """SIGTERM (a clean exit); SIGKILL if still running after timeout_s. Returns the exit status."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode if self.proc else None

    def kill(self):
        """SIGKILL and reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def log_tail(self, n_bytes=3000):
        """The end of the log, for failure messages ("" when there is none)."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def close(self):
        """Stop it, and remove the log file if this object made it."""
        self.stop()
        if self._owns_log and self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
