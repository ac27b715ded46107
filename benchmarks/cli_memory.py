"""What the command line would cost the program that trains: why `train` execs into a
program without it (pipeline.launch).

    python benchmarks/cli_memory.py

Each step runs in a fresh process, which prints its VmRSS (from /proc) after:
  c imports      what the quickstart loop (overhead.py's c) imports: torch, torchvision, ...;
  + stage        the stage's own modules as well (pipeline.stages: rich's progress bar, ...):
                 about what pipeline.launch, the program that trains, holds;
  + CLI imports  pipeline.cli as well (Typer, its click, rich's tables);
  + CLI parse    `pipeline train ...` parsed by Typer up to the call of stages.train, which is
                 replaced by a stub (with launch.IN_PROCESS set, so nothing is exec'd).
The peaks come later, while torchvision reads the training images (about 90 MiB over this
baseline, the same for all), so these differences carry over to the peak RSS.
"""

import os
import subprocess
import sys

STEPS = {
    "c imports": "",
    "+ stage": "from pipeline import stages",
    "+ CLI imports": "from pipeline import stages, cli",
    "+ CLI parse": """
from pipeline import stages, cli, launch
launch.IN_PROCESS = True
stages.train = lambda *args, **kwargs: report()
sys.argv = ["pipeline", "train", "--device", "cpu", "--dataset", "synthetic", "--quiet"]
cli.main()
""",
}

PRELUDE = """
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor
from pipeline import data

def report():
    status = open("/proc/self/status").read()
    print(int(status.split("VmRSS:")[1].split()[0]) / 1024)
"""


def rss_after(code: str) -> float:
    program = PRELUDE + code + ("" if "report()" in code else "\nreport()")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    previous = None
    print(f"{'':14} {'RSS MiB':>8} {'added':>7}")
    for name, code in STEPS.items():
        rss = min(rss_after(code) for _ in range(3))  # the least of 3: page-cache noise aside
        added = "" if previous is None else f"{rss - previous:+.1f}"
        print(f"{name:14} {rss:>8.1f} {added:>7}")
        previous = rss


if __name__ == "__main__":
    main()
