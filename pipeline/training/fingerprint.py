"""What identifies the data a run used, for MLflow's dataset inputs: a digest of every byte of
it, and the plain record tracking/runs.py logs as a run input.

MLflow's own digests read the first 10,000 elements of a data set, so two runs on data that
differs further on would show one digest. This one hashes every image and label the run
feeds (with their shapes and types) in the order it feeds them: the same bytes give the same
digest, any other bytes another. It is SHA-256 cut to the 36 characters MLflow's digest column
holds (PostgreSQL enforces that width)."""

import hashlib
from pathlib import Path

import torch

from pipeline.training import data

DIGEST_CHARS = 36


def digest(batches) -> str:
    """The digest of a split as its batches hold it: the stored tensors, or else every batch
    the loader makes."""
    h = hashlib.sha256()
    for tensor in _tensors(batches):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()[:DIGEST_CHARS]


def _tensors(batches):
    """The stored tensors (TensorBatches), else the data set's stored bytes where it has them
    (IDX, CIFAR: the same as the tensors path), else each item as the loader makes it."""
    if hasattr(batches, "x"):
        return batches.x, batches.y
    return data.host_tensors(batches.loader.dataset, stored=True)


def dataset_input(name: str, data_dir: Path, batches, context: str) -> dict:
    """One split as a run input (see tracking.runs.Run.log_datasets); its source: the folder
    of an `imagefolder:PATH`, a factory's reference, else the data folder."""
    if name.startswith("imagefolder:"):
        source = str(Path(name.removeprefix("imagefolder:")).resolve())
    else:
        source = name if ":" in name else str(Path(data_dir).resolve())
    return {
        "name": name,
        "digest": digest(batches),
        "source": source,
        "rows": batches.num_samples,
        "context": context,
    }
