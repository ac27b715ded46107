"""Where a training step's time goes: a short window of training batches under torch.profiler,
after the first epoch and outside every timed epoch, on a copy of the model (the run's own
weights and trajectory are untouched), with an optimizer of the run's kind and options.
The window runs the step eagerly: for a compiled run it shows the operations the model asks
for, not torch.compile's kernels, and the run says so in `pipeline.profile_step`.

The table has one row an ATen operation: calls, self time on the host, self time on the
device where the profiler has it (CUDA), and its share of the window. On `mps` torch.profiler
sees only the host side of each dispatch (pytorch#99037): the shares are of host time, and
the run says so in `pipeline.profile_note`.
"""

import copy
import itertools
import os
import re
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline import devices
from pipeline.training import loops

DEFAULT_BATCHES = 20
NOTES = {
    "mps": "mps: host-side dispatch only (torch.profiler has no MPS activity, pytorch#99037); "
    "shares are of host time",
    "cpu": "cpu: self time on the host",
    "cuda": "cuda: self time on the device (CUDA activity), host time beside it",
}


@contextmanager
def _quiet_stderr():
    """The profiler's C++ side prints its start, stop and device probes on stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_window(
    model: torch.nn.Module,
    batches: Iterable,
    lr: float,
    device: torch.device,
    precision: devices.Precision,
    num_batches: int = DEFAULT_BATCHES,
    trace: Path | None = None,
    optimizing: dict | None = None,
) -> list[dict]:
    """Train `num_batches` batches on a copy of the model under the profiler, with the
    optimizer `optimizing` names (loops.optimizer's name, weight_decay, momentum; SGD when
    None); return the operation table (and write a Chrome/Perfetto trace to `trace`).

    The copy's gradient scaler starts from the run's scale, and one step before the window
    (unprofiled) makes the optimizer's state (momentum, AdamW's moments): the window shows
    steady steps, not the first one's set-up."""
    net = copy.deepcopy(model)
    optimizer = loops.optimizer(net.parameters(), lr, device, **(optimizing or {}))
    own = devices.Precision(precision.name, device)  # a gradient scaler of its own ...
    if own.scaler is not None and precision.scaler is not None:
        own.scaler.load_state_dict(precision.scaler.state_dict())  # ... at the run's scale
    window = list(itertools.islice(batches, num_batches + 1))
    if len(window) > 1:  # data of one batch: that one is the window
        first, *window = window
        loops.train_epoch(net, [first], optimizer, loops.LossBuffer(1, device), precision=own)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    losses = loops.LossBuffer(len(window), device)
    with _quiet_stderr():
        prof = profile(activities=activities)
        prof.start()
    try:
        loops.train_epoch(net, window, optimizer, losses, precision=own)
        devices.synchronize(device)
    finally:
        with _quiet_stderr():
            prof.stop()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    return table(prof.key_averages(), len(window), device.type == "cuda")


def describe_step(optimizing: dict | None, compile_mode: str = "none") -> str:
    """What the window ran: 'eager, sgd', 'eager, adamw (weight_decay 0.01); the run is
    compiled (default): ...'."""
    options = dict(optimizing or {"name": "sgd"})
    name = options.pop("name", "sgd")
    if name != "sgd":
        options.pop("momentum", None)  # SGD's alone
    given = ", ".join(f"{k} {v}" for k, v in options.items() if v)
    step = f"eager, {name}" + (f" ({given})" if given else "")
    if compile_mode != "none":
        step += (
            f"; the run is compiled ({compile_mode}): the window profiles the step's eager "
            "operations, not torch.compile's kernels"
        )
    return step


def table(averages, batches: int, on_device: bool) -> list[dict]:
    """One row an ATen operation, most time first: name (normalised across devices), calls,
    self host and device microseconds, per call, per batch, and share of the window."""
    rows: dict[str, dict] = {}
    for event in averages:
        if not event.key.startswith("aten::"):
            continue
        row = rows.setdefault(
            normalise(event.key),
            {
                "operation": normalise(event.key),
                "calls": 0,
                "self_host_us": 0.0,
                "self_device_us": 0.0,
            },
        )
        row["calls"] += event.count
        row["self_host_us"] += event.self_cpu_time_total
        row["self_device_us"] += getattr(event, "self_device_time_total", 0.0) or 0.0
    timed = "self_device_us" if on_device else "self_host_us"
    total = sum(r[timed] for r in rows.values()) or 1.0
    for row in rows.values():
        row["us_per_call"] = row[timed] / row["calls"] if row["calls"] else 0.0
        row["us_per_batch"] = row[timed] / batches
        row["share"] = row[timed] / total
        row["batches"] = batches
    return sorted(rows.values(), key=lambda r: -r["share"])


# Each back end's own variant of an operation, as the one operation a user wrote.
VARIANTS = re.compile(r"^aten::_?(?:mps_|cudnn_|mkldnn_|miopen_|xnnpack_)")


def normalise(name: str) -> str:
    """aten::mkldnn_convolution, aten::cudnn_convolution, aten::_mps_convolution ->
    aten::convolution: the same operation on each device."""
    return VARIANTS.sub("aten::", name)
