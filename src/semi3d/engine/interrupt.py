"""A clean stop on Ctrl-C (SIGINT) or SIGTERM (``kill``, SLURM's time limit or preemption,
Kubernetes): the training step in progress finishes, the trainer writes a resumable checkpoint at
that step and raises :class:`Interrupted`. A second Ctrl-C stops at once (the last periodic
checkpoint stays resumable).

Under ``torchrun`` the ranks agree after every step (one all-reduce of the signal number, see
``Trainer.fit``), so all of them stop after the same step, whichever rank the signal reached;
torchrun forwards a SIGINT / SIGTERM it gets to every worker and kills them after
``--shutdown-timeout`` seconds (default 30), which must cover a step and a checkpoint. Outside
the main thread the signals keep their default behaviour.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from ..errors import InputError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by signal ``signum`` after writing a resumable checkpoint of ``step`` at
    ``path``; ``exit_code`` is the shell's convention, 128 + ``signum``."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, Path(path)
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} after step {step}: resumable checkpoint {path}")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training (preprocessing, evaluation, mining's refinement), raised by
    :func:`sigterm_raises` as Ctrl-C raises ``KeyboardInterrupt``; ``exit_code`` 143."""

    exit_code = 128 + signal.SIGTERM


def what_stopped(e: KeyboardInterrupt) -> str:
    """How a ``stopped:`` line names ``e``: an :class:`Interrupted`'s signal, step and checkpoint,
    ``SIGTERM`` for a :class:`Terminated`, ``Ctrl-C`` for Python's own ``KeyboardInterrupt``."""
    return str(e) or "Ctrl-C"


@contextlib.contextmanager
def sigterm_raises():
    """``with sigterm_raises():``: inside the block SIGTERM raises :class:`Terminated`, so what it
    stops cleans up as after a Ctrl-C (a run folder begun in preprocessing goes again) and the caller
    can say how to go on; training's :class:`StopRequest` takes both signals over for its steps. Only
    in the main thread; the previous handler comes back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def one_line_exits(say: Callable[[str, str], None], stop_hint: str = ""):
    """``with one_line_exits(say):`` a command-line program's ends instead of a traceback (the CLI's
    verbs, the benchmark scripts): bad input (an ``InputError``, naming the file and the problem)
    calls ``say("error:", message)`` and exits with code 2; a Ctrl-C or SIGTERM (SIGTERM raises
    :class:`Terminated` inside, :func:`sigterm_raises`) calls ``say("stopped:", what + stop_hint)``
    and exits with the signal's code, 130 / 143."""
    try:
        with sigterm_raises():
            yield
    except InputError as e:
        say("error:", str(e))
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        say("stopped:", what_stopped(e) + stop_hint)
        raise SystemExit(getattr(e, "exit_code", 130)) from None


class StopRequest:
    """``with StopRequest() as stop:``: inside the block SIGINT and SIGTERM only set ``stop.signum``
    (None until one arrives); the previous handlers come back on exit. ``announce``: say on stderr
    that the stop is coming (under torchrun rank 0 only)."""

    def __init__(self, announce: bool = True):
        self.enabled = threading.current_thread() is threading.main_thread()
        self.announce = announce
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum, again = signum, ""
        if signum == signal.SIGINT:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            again = " (Ctrl-C again to stop at once)"
        if self.announce:
            sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step with a resumable checkpoint{again}\n")

    def __enter__(self) -> "StopRequest":
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
