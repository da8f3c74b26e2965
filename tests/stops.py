"""Stopping the code under test as a user or SLURM would, shared across test folders (on
``sys.path`` through pyproject's pytest ``pythonpath``)."""
import os
import signal
import time

STOPS = [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")]  # (signal, how a `stopped:` line names it)


def stop_now(signum: int) -> None:
    """Stop this process with ``signum`` from inside the code under test (SIGINT as the
    KeyboardInterrupt Python makes of it: a pytest started in the background ignores SIGINT); the
    handler under test must raise, else the test fails."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    os.kill(os.getpid(), signum)
    time.sleep(10)  # the handler raises in here
    raise AssertionError(f"signal {signum} did not stop the code under test")
