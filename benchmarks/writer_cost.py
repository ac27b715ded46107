"""Does the tracking writer process slow training down? Pairs of processes, interleaved.

    python benchmarks/writer_cost.py --pairs 6

Each pair runs two processes one after the other, each training 3 epochs of the quickstart MLP
through the pipeline's own loop (on-device uint8 batches, losses into the LossBuffer): one
alone, one with a tracking writer started and connected to a sqlite store, as `train` has it.
Prints each process's epoch times and the median over pairs of each kind. Interleaving keeps
slow drift of the machine from favouring either kind.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(with_writer: bool, data_dir: str, store: str) -> None:
    import torch

    from pipeline import data, loops, model
    from pipeline.writer import Writer

    if with_writer:
        writer = Writer()
        writer.call("connect", store, "writer-cost")
    train = data.load(data.DataSpec("synthetic", Path(data_dir), 0), True)
    batches = data.TensorBatches(train.data.unsqueeze(1), train.targets, 64)
    cpu = torch.device("cpu")
    net = model.initialised({"model": "mlp", "hidden": 512, "layers": 2}, 0, cpu)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    buffer = loops.LossBuffer(len(batches), cpu)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loops.train_epoch(net, batches, optimizer, buffer)
        buffer.drain()
        times.append(time.perf_counter() - t0)
    print(" ".join(f"{t:.3f}" for t in times))
    if with_writer:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--child", choices=["alone", "writer"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp()
    if args.child:
        return child(args.child == "writer", data_dir, args.store)

    from pipeline import data

    data.write_synthetic(Path(data_dir), 0, 60_000, 10_000)
    medians: dict[str, list[float]] = {"alone": [], "writer": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for _ in range(args.pairs):
            for kind in medians:
                cmd = [sys.executable, __file__, "--child", kind, "--data-dir", data_dir]
                out = subprocess.run(
                    [*cmd, "--store", store], capture_output=True, text=True, check=True
                ).stdout
                epochs = [float(t) for t in out.split()]
                medians[kind].append(statistics.median(epochs))
                print(f"{kind:7} epochs (s): {out.strip()}")
    for kind, values in medians.items():
        print(f"{kind}: median epoch over {args.pairs} processes {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
