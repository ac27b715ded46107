"""Data sets of any shape: synthetic written as a real format and read back by its torchvision
loader, image folders, the user's factory, cifar10; shape and classes read from the data; the
training order, seeded and the same for both loaders; each bad input one line and no run."""

import numpy as np
import pytest
import torch
from conftest import only_run
from PIL import Image
from test_errors import assert_no_run, assert_one_line_error
from torchvision import datasets as tv

from pipeline.config import DataSpec, data_spec
from pipeline.schema import Params
from pipeline.training import data, loops, model

CPU = torch.device("cpu")
ONE_EPOCH = ("train", "--device", "cpu", "--epochs", "1", "--no-system-metrics")
ONE_EPOCH += ("--profile-batches", "0", "--train-size", "64", "--test-size", "32")


def write_pngs(root, sizes=((3, 12, 10),) * 4, classes=("cat", "dog")) -> str:
    """root/train and root/test, a folder per class, PNGs of the given (C, H, W)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i, (c, h, w) in enumerate(sizes * 2):
            folder = root / split / classes[i % len(classes)]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def test_synthetic_of_another_shape_is_an_image_folder_of_pngs(tmp_path):
    spec = DataSpec("synthetic", tmp_path, 0, 60, 20, input_shape=(3, 8, 6), num_classes=5)
    train = data.batches(spec, True, "tensors", 16, CPU)
    assert train.input_shape == (3, 8, 6) and train.num_classes == 5
    root = tmp_path / "synthetic-seed0-60-20-3x8x6-c5"
    folder = tv.ImageFolder(str(root / "train"))  # torchvision's own reader, as users' data
    assert len(folder) == 60 and folder.classes == ["0", "1", "2", "3", "4"]
    path, label = folder.samples[-1]
    pixels = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    assert torch.equal(train.x[-1], pixels) and train.y[-1] == label
    again = data.batches(replace_dir(spec, tmp_path / "again"), True, "tensors", 16, CPU)
    assert torch.equal(again.x, train.x)  # the same generator, the same seed


def replace_dir(spec, folder):
    from dataclasses import replace

    return replace(spec, data_dir=folder)


def test_an_image_folder_is_read_with_its_shape_and_classes(tmp_path):
    spec = DataSpec(write_pngs(tmp_path / "pets"), tmp_path)
    for loader in ("tensors", "dataloader"):
        train = data.batches(spec, True, loader, 4, CPU)
        assert (train.input_shape, train.num_classes) == ((3, 12, 10), 2)
        x, _ = next(iter(train))
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    resized = DataSpec(spec.name, tmp_path, input_shape=(1, 6, 6))
    assert data.batches(resized, True, "tensors", 4, CPU).input_shape == (1, 6, 6)


def test_a_factory_data_set(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    for loader in ("tensors", "dataloader"):
        train = data.batches(DataSpec("mydata:good"), True, loader, 8, CPU)
        assert (train.input_shape, train.num_classes, train.num_samples) == ((3, 4, 4), 7, 20)


def test_the_order_is_seeded_the_same_for_both_loaders_and_new_each_epoch(tmp_path):
    spec = DataSpec("synthetic", tmp_path, 0, 200, 50, shuffle=True)
    tensors = data.batches(spec, True, "tensors", 64, CPU)
    loader = data.batches(spec, True, "dataloader", 64, CPU)
    plain = data.batches(replace_shuffle(spec, False), True, "tensors", 64, CPU)
    epochs = []
    for epoch in (1, 2):
        tensors.set_epoch(epoch), loader.set_epoch(epoch)
        a, b = list(tensors), list(loader)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        epochs.append(torch.cat([y for _, y in a]))
    assert not torch.equal(epochs[0], epochs[1])
    assert not torch.equal(epochs[0], torch.cat([y for _, y in plain]))
    assert sorted(epochs[0].tolist()) == sorted(plain.y.tolist())  # every sample, once


def replace_shuffle(spec, shuffle):
    from dataclasses import replace

    return replace(spec, shuffle=shuffle)


FACTORIES = """
import torch
from torch.utils.data import TensorDataset

def good():
    x = torch.rand(20, 3, 4, 4)
    y = torch.arange(20) % 7
    return TensorDataset(x, y), TensorDataset(x[:8], y[:8])

def raises():
    raise RuntimeError("the bucket is gone")

def one_split():
    return TensorDataset(torch.rand(4, 3, 4, 4), torch.arange(4))

def not_datasets():
    return iter([1]), iter([2])

def wrong_items():
    return [("a", 1)], [("b", 2)]
"""


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("imagenet", "unknown data set 'imagenet'"),
        ("imagefolder:nowhere", "imagefolder:nowhere: no such folder"),
        ("mydata:raises", "could not be built: the bucket is gone"),
        ("mydata:one_split", "must return (train, test)"),
        ("mydata:not_datasets", "list_iterator is not a non-empty map-style Dataset"),
        ("mydata:wrong_items", "items must be (tensor, label)"),
        ("mydata:missing", "mydata has no missing"),
    ],
)
def test_a_bad_data_set_is_one_line_and_no_run(cli, client, tmp_path, dataset, message):
    (tmp_path / "mydata.py").write_text(FACTORIES)  # the cli fixture runs in tmp_path
    assert_one_line_error(cli(*ONE_EPOCH, "--dataset", dataset), message)
    assert_no_run(client)


def test_images_of_mixed_shapes_are_one_line_and_no_run(cli, client, tmp_path):
    mixed = write_pngs(tmp_path / "mixed", sizes=((3, 12, 10), (3, 8, 8)))
    result = cli(*ONE_EPOCH, "--dataset", mixed)
    assert_one_line_error(result, "images of mixed shapes (3x12x10, 3x8x8)", "--input-shape")
    assert_no_run(client)


def test_a_data_set_too_large_for_the_device_names_the_dataloader(cli, client, monkeypatch):
    monkeypatch.setattr(data, "free_memory", lambda device: 1000)
    monkeypatch.setattr(data, "host_tensors", lambda dataset: pytest.fail("read it all first"))
    result = cli(*ONE_EPOCH, "--dataset", "synthetic")
    assert_one_line_error(result, "does not fit in cpu's free memory", "--loader dataloader")
    assert_no_run(client)


def test_cifar10_offline_without_its_files_is_one_line_and_no_run(cli, client, monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens: offline, at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    result = cli(*ONE_EPOCH, "--dataset", "cifar10")
    assert_one_line_error(result, "could not download CIFAR10", "no internet?")
    assert_no_run(client)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dataset", "mnist", "--classes", "5"), "--classes applies to --dataset synthetic"),
        (("--dataset", "mnist", "--input-shape", "3x8x8"), "--input-shape applies to"),
        (("--dataset", "synthetic", "--input-shape", "3x8"), "expected CxHxW"),
        (("--dataset", "synthetic", "--input-shape", "2x8x8"), "1, 3 or 4 channels"),
    ],
)
def test_bad_shape_options_are_one_line_and_no_run(cli, client, args, message):
    assert_one_line_error(cli(*ONE_EPOCH, *args), message)
    assert_no_run(client)


def test_shape_classes_and_order_are_recorded(cli, client):
    args = ("--dataset", "synthetic", "--input-shape", "3x8x8", "--classes", "4")
    result = cli(*ONE_EPOCH, *args, "--shuffle")
    assert result.code == 0, result.stderr
    params = only_run(client).data.params
    assert params[Params.INPUT_SHAPE] == "3x8x8" and params[Params.NUM_CLASSES] == "4"
    assert params[Params.SHUFFLE] == "true"
    assert params[Params.MODEL] == "mlp-192-512-512-4"


@pytest.mark.parametrize(
    ("name", "shuffled"),
    [
        ("fashion-mnist", False),
        ("mnist", False),
        ("synthetic", False),
        ("cifar10", True),
        ("imagefolder:pets", True),
        ("mydata:good", True),
    ],
)
def test_shuffle_is_off_for_the_data_sets_runs_used_so_far_and_on_for_the_others(name, shuffled):
    options = {"dataset": name, "data_dir": "d", "seed": 0, "train_size": None, "test_size": None}
    assert data_spec(options).shuffle is shuffled
    assert data_spec(options | {"shuffle": not shuffled}).shuffle is (not shuffled)


def test_training_tells_the_batches_their_epoch(tmp_path):
    spec = DataSpec("synthetic", tmp_path, 0, 64, 32, shuffle=True)
    train = data.batches(spec, True, "tensors", 32, CPU)
    test = data.batches(spec, False, "tensors", 32, CPU)
    told = []
    train.set_epoch = told.append
    list(loops.fit(model.build(hidden=8), train, test, 2, 0.01, CPU, loops.LossBuffer(4, CPU)))
    assert told == [1, 2]
