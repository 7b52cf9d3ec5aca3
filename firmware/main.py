"""The app's entry: firmware/startup.py boots it up to a node (and is unloaded: ~4 KB of
bytecode a running node does not need), then the node runs until the board resets.

On a board, the slot's main.py calls run(); on the virtual rig, the launcher runs
`micropython -X heapsize=... -c "from firmware.main import run; run('<flash dir>')"`.
"""
import sys

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio


async def _clear_crashes(node, fs):
    """Once the app has run boot.CRASH_CLEAR_MS with a sensor reading seen, its earlier crashes
    are no longer "in a row" (firmware/boot.py counts them to detect a crash loop)."""
    from firmware.compat import boot_call

    if not boot_call("crash_count", fs):
        return  # firmware/boot.py is held only for the calls: not for the app's life
    clear_ms = boot_call("CRASH_CLEAR_MS")
    while not (node.selftest_done and node.now_ms() >= clear_ms):
        await asyncio.sleep_ms(5000)
    boot_call("clear_crashes", fs)
    print("boot", "the app runs: crash count cleared")


async def _run_node(node, fs, tasks):
    asyncio.create_task(_clear_crashes(node, fs))
    await asyncio.gather(*tasks)


def run(root="."):
    from firmware import startup
    from firmware.compat import unload

    got = startup.build(root)
    tasks = None if got is None else startup.tasks(got[0])
    startup = None
    unload("firmware.startup")
    if got is None:
        return  # the safe state ran (it returns only on Ctrl-C)
    node, fs = got
    try:
        asyncio.run(_run_node(node, fs, tasks))
    except KeyboardInterrupt:
        print("node", "stopped (Ctrl-C)")
        raise  # to the REPL: the root main.py takes a return for a crash (the app never ends)
    finally:
        try:
            node.ring.flush()
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            print("node", "ring flush failed: %s" % e)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else ".")
