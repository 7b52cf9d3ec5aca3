"""A synchronous handle on a virtual rig, for HIL tests and `fleet verify`: the rig's asyncio
loop runs in a background thread; every call here is bounded by a timeout and every process
the rig started is stopped by stop() (also at interpreter exit)."""
import asyncio
import atexit
import threading
import time

from fleet.errors import FleetError


class RigTimeout(FleetError):
    """A wait on the rig ran out; the message says what was expected, what was seen and where
    the logs are."""


class RigHandle:
    def __init__(self, home, topology, options=None, log=None):
        from fleet.sim.rig import Rig

        self.home = home
        self.rig = Rig(home, topology, options, log=log)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rig-loop", daemon=True)
        self._thread.start()
        self._stopped = False
        atexit.register(self.stop)

    def call(self, coro, timeout_s=120):
        """Run a coroutine on the rig's loop; return its result (raises its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def call_soon(self, fn, *args, timeout_s=30):
        async def _run():
            return fn(*args)

        return self.call(_run(), timeout_s)

    def start(self, timeout_s=180):
        self.call(self.rig.start(), timeout_s)
        return self

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.rig.stop(), 60)
        except Exception as e:  # noqa: BLE001 - keep stopping what is left
            for np in self.rig.nodes.values():
                np.kill(True)
            if self.rig.broker is not None:
                self.rig.broker.kill()
            self.rig.log("rig: stop failed (%s); processes killed" % (e,))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ---- observation ----------------------------------------------------------------------------

    def store(self):
        return self.home.store()

    def query(self, sql, *args):
        store = self.home.store()
        try:
            return store.query(sql, *args)
        finally:
            store.close()

    def wait_until(self, predicate, timeout_s, what, poll_s=1.0):
        """Poll predicate() (returns a truthy value when done) until timeout_s; return its value,
        or raise RigTimeout saying `what` was awaited, the last value seen and the log paths."""
        end = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < end:
            last = predicate()
            if last and not (isinstance(last, tuple) and not last[0]):
                return last
            time.sleep(poll_s)
        raise RigTimeout("timed out after %ds waiting for %s; last seen: %r; node logs under %s/sim/nodes/*/console.log"
                         % (timeout_s, what, last, self.home.path))

    # ---- faults -----------------------------------------------------------------------------------

    def kill_node(self, node_id):
        self.call_soon(self.rig.kill_node, node_id)

    def start_node(self, node_id):
        self.call_soon(self.rig.start_node, node_id)

    def reflash_node(self, node_id, overrides):
        self.call_soon(self.rig.reflash_node, node_id, overrides)

    def set_ap(self, node_id, up=None, channel=None):
        """Gateway node_id's Wi-Fi access point up/down and/or on another channel (Rig.set_ap)."""
        return self.call_soon(self.rig.set_ap, node_id, up, channel)

    def stop_collector(self):
        self.call(self.rig.stop_collector(), 30)

    def start_collector(self):
        self.call(self.rig.start_collector(), 30)

    def kill_broker(self):
        self.call_soon(self.rig.kill_broker)

    def restart_broker(self):
        self.call(asyncio.to_thread(self.rig.restart_broker), 60)

    def medium(self, cmd):
        """Send one fault command to the medium (see fleet.sim.medium.Medium.control)."""
        return self.call_soon(self.rig.medium.control, cmd)
