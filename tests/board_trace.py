"""Stop virtual boards at the end of a test and, when the test failed, print what each board's
supervisor saw last (fleet/sim/board/flash.py TRACE_FILE): pytest shows it under the failure as
"Captured stdout teardown", so a failure on a busy CI machine comes with its evidence."""


def stop_boards(request, boards):
    """Stop every board (by PID, pass or fail); print their traces if the test's call failed."""
    for b in boards:
        b.stop()
    if getattr(request.node, "redmesh_call_failed", False):
        for b in boards:
            print(f"--- virtual board on {b.port} (flash {b.flash_dir}): its supervisor's last lines ---")
            print(b.last_trace or "(no trace: the supervisor was killed, not stopped)")
