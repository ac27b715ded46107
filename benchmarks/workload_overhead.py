"""What the instrument costs on a CIFAR-shaped workload: `pipeline train` against a bare loop
over the same data, taking turns inside one process (benchmarks/overhead.py's same-process
method, for another workload than the quickstart's).

    python benchmarks/workload_overhead.py --model cnn --rounds 6
    python benchmarks/workload_overhead.py --model mlp --input-shape 3x32x32 --classes 10

The data: the synthetic data set of --input-shape (3x32x32) with --classes classes,
--train-size/--test-size images, written once as `pipeline train` writes it (an image
folder of PNGs) and read the pipeline's way (uint8 held, each batch scaled to floats when it
is taken). In turns, --rounds times, each figure the faster of two epochs from a fresh model:
  a8 a bare PyTorch loop over those batches: the model `pipeline train` builds for the
     shape, from the same seed; SGD at lr 1e-3, batch 64; a test pass after every epoch; no
     tracking, timers or logging.
  b  `pipeline train` itself (cli.execute in this process, every loss logged to sqlite, the
     profiled window, the parity of the defaults): its epoch_time_s as logged.
One process, one allocator setting (the pipeline's, set first), one CPU placement: the
machine's drift between processes is out, so b/a8 is what the loop, timers and logging cost.
The target, as for the quickstart's workload: b/a8 <= 1.03.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from overhead import BATCH, SEED, bare_epochs


def turns(args, data_dir: str) -> dict[str, list[float]]:
    """a8 and b taking turns in this process; each figure the faster of two epochs."""
    import torch
    from mlflow import MlflowClient

    from pipeline import cli, devices
    from pipeline.data_options import as_shape
    from pipeline.training import data, model

    devices.keep_freed_host_memory()
    shape = as_shape(args.input_shape)
    spec = data.DataSpec(
        "synthetic", Path(data_dir), SEED, args.train_size, args.test_size, shape, args.classes
    )
    cpu = torch.device("cpu")
    train, test = (data.batches(spec, split, "tensors", BATCH, cpu) for split in (True, False))
    config = {"model": args.model, "hidden": 512, "layers": 2}
    config |= {"input_shape": list(train.input_shape), "num_classes": train.num_classes}
    store = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    client = MlflowClient(store)
    options = ["--dataset", "synthetic", "--data-dir", data_dir, "--model", args.model]
    options += ["--input-shape", args.input_shape, "--classes", str(args.classes)]
    options += ["--train-size", str(args.train_size), "--test-size", str(args.test_size)]

    def pipeline_epochs() -> list[float]:
        cli.execute(["train", "--device", "cpu", *options, "--epochs", "2", "--quiet",
                     "--tracking-uri", store])  # fmt: skip
        run = client.search_runs(["0"], order_by=["attributes.start_time DESC"])[0]
        return [m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")]

    def bare() -> list[float]:  # the pipeline's model for the shape, from the same seed
        return bare_epochs(train, test, 2, net=model.initialised(config, SEED, cpu))

    variants = {"a8": bare, "b": pipeline_epochs}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(min(variants[name]()))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", help="mlp, cnn or vit")
    parser.add_argument("--input-shape", default="3x32x32")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6, help="turns of each variant")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp()
    times = turns(args, data_dir)
    print(
        f"{args.model} on synthetic {args.input_shape}, {args.classes} classes, "
        f"{args.train_size:,}/{args.test_size:,} images, batch {BATCH}, CPU; "
        f"epoch s, the faster of two from a fresh model, {args.rounds} turns each:"
    )
    for name, each in times.items():
        shown = " ".join(f"{t:.2f}" for t in each)
        print(f"  {name:3} best {min(each):.3f} median {statistics.median(each):.3f}: {shown}")
    for which, pick in (("best", min), ("median", statistics.median)):
        ratio = pick(times["b"]) / pick(times["a8"])
        met = "met" if ratio <= 1.03 else "NOT met"
        print(f"  {which}: b/a8 = {ratio:.3f} (target <= 1.03: {met})")


if __name__ == "__main__":
    main()
