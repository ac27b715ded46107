"""How a run ends: SIGINT and SIGTERM are caught while a run exists, and whatever happens, the
run ends FINISHED, FAILED or KILLED, with the reason in `pipeline.failure_reason`."""

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.schema import Tags


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `code` is the exit status to leave with (130 or 143)."""

    def __init__(self, code: int):
        super().__init__(f"interrupted by {'SIGINT' if code == 130 else 'SIGTERM'}")
        self.code = code


class Diverged(Exception):
    """The loss became NaN or infinite; the run is stopped and marked FAILED."""


class StopRequest:
    """Set by SIGINT or SIGTERM; the work stops at its next check, never in the middle of a
    write to the tracking store. A second signal stops at once."""

    def __init__(self) -> None:
        self.code: int | None = None

    def handle(self, signum, frame) -> None:
        if self.code is not None:
            raise Interrupted(self.code)
        self.code = 130 if signum == signal.SIGINT else 143

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that asked to stop, if one did."""
        return {130: signal.SIGINT, 143: signal.SIGTERM}.get(self.code)

    def check(self) -> None:
        if self.code is not None:
            raise Interrupted(self.code)


@contextmanager
def interrupts_requested() -> Iterator[StopRequest]:
    """Catch SIGINT and SIGTERM for the duration, so that a run can be closed cleanly."""
    stop = StopRequest()
    saved = {s: signal.signal(s, stop.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@contextmanager
def run_closed(run, stop: StopRequest, before_kill: Callable[[], object] = lambda: None):
    """Whatever happens inside, `run` (anything with set_tags and end) ends FINISHED, FAILED or
    KILLED, with the reason. A signal that arrived at any moment inside ends it KILLED, even
    when the work it interrupted went on to the end."""
    try:
        yield
        stop.check()
    except Interrupted as e:
        before_kill()
        run.set_tags({Tags.FAILURE_REASON: str(e)})
        run.end("KILLED")
        raise
    except BaseException as e:
        reason = str(e) if isinstance(e, Diverged) else f"{type(e).__name__}: {e}"
        run.set_tags({Tags.FAILURE_REASON: reason[:5000]})
        run.end("FAILED")
        raise
    run.end("FINISHED")
