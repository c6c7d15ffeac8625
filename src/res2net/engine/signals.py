"""How a run stops before its end: stop requests (SIGTERM/SIGINT recorded by :class:`StopSignals`, honoured at
the next step boundary as :class:`Preempted`) and a diverged loss (:class:`TrainingDiverged`)."""

from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Iterable, Iterator, Optional

from ..errors import Res2NetError


class TrainingDiverged(Res2NetError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class Preempted(Res2NetError):
    """SIGTERM or SIGINT stopped the run at a step boundary, after ``last.pt`` was written. ``exit_code`` is
    128 + the signal number (143 for SIGTERM, 130 for SIGINT), so that a scheduler can requeue the job."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """SIGTERM/SIGINT handlers that only record the request; the loop stops at the next step boundary.

    Installed by :meth:`Trainer.fit` for its duration (the previous handlers come back afterwards). The handler
    never raises, so a signal that arrives while a checkpoint is written cannot cut the file."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.count = 0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number (SIGTERM's when none arrived)."""
        return 128 + int(self.signum or signal.SIGTERM)

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (only possible in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class EvaluationInterrupted(Exception):
    """A stop was requested while rank 0 evaluated; the evaluation is redone after the resume."""


def stoppable(loader: Iterable[Any], stop: StopSignals) -> Iterator[Any]:
    """The batches of ``loader``; raises :class:`EvaluationInterrupted` before the next one once a stop is
    requested.

    Args:
        loader: the batches.
        stop: the run's stop requests.

    Returns:
        An iterator over the batches.
    """
    for batch in loader:
        if stop.requested:
            raise EvaluationInterrupted
        yield batch

