"""The tracking writer: a process of its own that owns a stage's MLflow client and run.

`train` and `test` start one (`Writer()`), send it plain data, one JSON line per call, and
get on with their work. So the process that trains never imports MLflow: MLflow's imports
(pandas, pyarrow, SQLAlchemy, ...), its store, its HTTP round trips and its system-metrics
thread cost memory and time in the writer, not in the process being measured.

Every call is answered, in order, on the writer's stdout. `send` does not wait; an error of a
call sent that way is raised at the next `call` or `wait`. When the training process goes
away without ending its run (SIGKILL, the out-of-memory killer), the writer sees its input
close and ends the run KILLED, so no run is left RUNNING. The writer ignores SIGINT and
SIGTERM: Ctrl-C reaches the whole process group, and the training process decides how its
run ends.

    python -m pipeline.writer      # what Writer() starts; reads calls on stdin

The writer process's side, which carries the calls out, is tracking.Session and
tracking.serve.
"""

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pipeline.errors import UserError


class TrackingError(Exception):
    """The writer could not carry out a call (the store went away, the writer died)."""


class Writer:
    """The training process's side: starts the writer process and sends it calls."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.replies: queue.Queue = queue.Queue()
        self.pending = 0  # calls sent and not answered yet
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)  # the writer has exited

    def send(self, op: str, *args) -> None:
        """Have the writer carry out `op`; don't wait for it."""
        try:
            self.proc.stdin.write(json.dumps([op, args]) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: closed already
            raise TrackingError(self._exited()) from None
        self.pending += 1

    def call(self, op: str, *args):
        """Have the writer carry out `op` (after every call sent before it); return its result.
        Raises the first error among the calls answered."""
        self.send(op, *args)
        replies = [self._next() for _ in range(self.pending)]
        _raise_first_error(replies)
        return replies[-1]["result"]

    def wait(self) -> None:
        """Wait until every call sent so far is carried out; raise the first error."""
        self.call("wait")

    def start_run(self, name: str | None, default_name: str, tags: dict, system_metrics: float):
        """Create the run (named `name`, or `default_name` made unique); after `connect`."""
        return RemoteRun(self, self.call("start_run", name, default_name, tags, system_metrics))

    def _next(self) -> dict:
        reply = self.replies.get()
        if reply is None:
            self.replies.put(None)  # stays the last word
            raise TrackingError(self._exited())
        self.pending -= 1
        return reply

    def _exited(self) -> str:
        code = self.proc.wait()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        return (
            f"the tracking writer process {how}; what it had not written yet is lost, "
            "and its run may be left RUNNING"
        )

    def close(self) -> None:
        """No more calls: the writer finishes what it was sent, then exits."""
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.wait()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _raise_first_error(replies: list[dict]) -> None:
    for reply in replies:
        if "error" in reply:
            raise (UserError if reply.get("user") else TrackingError)(reply["error"])


class RemoteRun:
    """A run held by the writer, with tracking.Run's methods. Writes don't wait, except those
    whose input may go away once they return (artifacts) and the end of the run."""

    def __init__(self, writer: Writer, run_id: str):
        self.writer, self.run_id = writer, run_id

    def log_params(self, params: dict) -> None:
        self.writer.send("log_params", params)

    def set_tags(self, tags: dict) -> None:
        self.writer.send("set_tags", tags)

    def log_series(self, key: str, first_step: int, values: list[float]) -> None:
        self.writer.send("log_series", key, first_step, values)

    def log_metrics(self, values: dict, step: int = 0) -> None:
        self.writer.send("log_metrics", values, step)

    def log_curves(self, losses: list[float], epochs: list[tuple[int, float, float]]) -> None:
        """curves.png: every batch's loss, and (epoch, test accuracy, test loss) of each epoch."""
        self.writer.send("log_curves", losses, epochs)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.writer.call("log_artifacts", str(local_dir), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.writer.call("end", status)


if __name__ == "__main__":  # the writer process
    # Before the seconds of importing MLflow: Ctrl-C is for the training process to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from pipeline import tracking

    tracking.serve()
