"""What a node does when it has no usable config (missing, corrupt or invalid config.cbor), or
when its app crashed CRASH_LOOP_N times in a row (firmware/boot.py after_crash).

Behaviour (the shell, firmware/startup.py, implements the loop; `safe_state_loop` is that loop
with the clock and console injected):
- It does not start the radio, the sensor or the mesh: without its keys a node must not talk
  to the mesh, and guessing a role or an id could disturb a working network.
- It prints one line every SAFE_STATE_INTERVAL_S seconds on the console, starting with the tag
  "safe-state", saying why and what to do (re-provision over USB). A technician's serial
  monitor, `mpremote` and `fleet node logs` all see it; no secret is ever printed (ConfigError
  messages never contain key material).
- The REPL stays reachable: the loop only sleeps and prints, so Ctrl-C interrupts it and raw
  REPL / `fleet provision` work over USB.
- It never crash-loops: nothing in the loop can raise, and it never resets the board itself.
  The watchdog boot.py started cannot be stopped: the injected sleep feeds it (firmware/startup.py
  safe_state, firmware/boot.py enter_safe_state), so the node stays in this state. LEDs are not blinked: the node is on
  a street light, and a blinking pole would alarm passers-by more than it would help.
"""
SAFE_STATE_INTERVAL_S = 30
TAG = "safe-state"


def safe_state_message(err, what="no usable config"):
    """Return the one-line console message for `what` (a config error, a crash loop) caused by
    `err` (an exception or text)."""
    try:
        why = str(err)
    except Exception:  # noqa: BLE001 - a message must come out whatever err is
        why = "unknown error"
    if not why:
        why = type(err).__name__
    return ("%s: %s. The node is idle (radio and sensor off). Re-provision it "
            "over USB (fleet provision --port <port>); the REPL stays available." % (what, why))


def safe_state_loop(err, sleep_s, log=print, interval_s=SAFE_STATE_INTERVAL_S, rounds=None, what="no usable config"):
    """Print the safe-state line every `interval_s` seconds via `log(tag, msg)`, sleeping with
    `sleep_s(seconds)`; forever, or `rounds` times (tests). KeyboardInterrupt (Ctrl-C at the
    REPL) propagates; nothing else escapes."""
    msg = safe_state_message(err, what)
    n = 0
    while rounds is None or n < rounds:
        try:
            log(TAG, msg)
        except Exception:  # noqa: BLE001 - a console write error must not end the loop
            pass
        n += 1
        if rounds is not None and n >= rounds:
            break
        sleep_s(interval_s)
