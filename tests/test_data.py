"""The synthetic data set: deterministic, FashionMNIST-shaped, read through torchvision."""

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from pipeline.training import data


def test_synthetic_is_written_as_idx_and_read_through_torchvision(tmp_path):
    spec = data.DataSpec("synthetic", tmp_path, seed=3, train_size=300, test_size=100)
    train, test = data.load(spec, train=True), data.load(spec, train=False)
    assert isinstance(train, data.SyntheticFashionMNIST)  # torchvision's FashionMNIST loader
    assert train.data.shape == (300, 28, 28) and train.data.dtype == torch.uint8
    assert test.data.shape == (100, 28, 28)
    assert set(train.targets.unique().tolist()) == set(range(10))
    raw = tmp_path / "synthetic-seed3-300-100" / "SyntheticFashionMNIST" / "raw"
    assert torch.equal(read_image_file(str(raw / "train-images-idx3-ubyte")), train.data)
    assert torch.equal(read_label_file(str(raw / "t10k-labels-idx1-ubyte")), test.targets)


def test_synthetic_depends_on_the_seed_only(tmp_path):
    def images(folder, seed):
        return data.load(data.DataSpec("synthetic", tmp_path / folder, seed, 200, 50), True).data

    assert torch.equal(images("a", 1), images("b", 1))
    assert not torch.equal(images("a", 1), images("c", 2))


def test_synthetic_is_written_once(tmp_path):
    spec = data.DataSpec("synthetic", tmp_path, 0, 100, 20)
    root = data.write_synthetic(tmp_path, 0, 100, 20)
    stamp = (root / "SyntheticFashionMNIST" / "raw" / "train-images-idx3-ubyte").stat().st_mtime_ns
    data.load(spec, True)
    after = (root / "SyntheticFashionMNIST" / "raw" / "train-images-idx3-ubyte").stat().st_mtime_ns
    assert stamp == after


def test_both_loaders_give_the_same_batches(tmp_path):
    spec = data.DataSpec("synthetic", tmp_path, 0, 200, 50)
    cpu = torch.device("cpu")
    tensors = list(data.batches(spec, True, "tensors", 64, cpu))
    loader = list(data.batches(spec, True, "dataloader", 64, cpu))
    assert len(tensors) == len(loader) == 4
    for (xa, ya), (xb, yb) in zip(tensors, loader, strict=True):
        assert xa.shape == xb.shape and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_splits_digest_is_its_stored_bytes_whichever_loader_feeds_it(tmp_path):
    """The data set input's digest: the same bytes give the same digest on both loaders, and
    one changed byte another."""
    from pipeline.training import fingerprint

    spec = data.DataSpec("synthetic", tmp_path, seed=3, train_size=300, test_size=100)
    cpu = torch.device("cpu")
    tensors = data.batches(spec, False, "tensors", 64, cpu)
    loader = data.batches(spec, False, "dataloader", 64, cpu)
    assert fingerprint.digest(tensors) == fingerprint.digest(loader)
    assert len(fingerprint.digest(tensors)) == fingerprint.DIGEST_CHARS == 36
    tensors.x[-1, 0, -1, -1] += 1  # the last byte of the last image
    assert fingerprint.digest(tensors) != fingerprint.digest(loader)
