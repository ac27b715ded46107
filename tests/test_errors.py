"""Errors a user can cause: one line on stderr, exit code 2, no traceback, nothing half-logged."""

import pytest
import torch
from conftest import SMALL, pipeline_process
from torchvision import datasets

from pipeline import devices
from pipeline.training import data


def assert_one_line_error(result, *expected: str) -> None:
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0]


def assert_no_run(client) -> None:
    exp = client.get_experiment_by_name("Default")
    assert exp is None or client.search_runs([exp.experiment_id]) == []


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("mps", "device 'mps' is not available here; this machine has: cpu"),
        ("cuda", "device 'cuda' is not available here; this machine has: cpu"),
        ("cuda:7", "device 'cuda:7' is not available here; this machine has: cpu"),
        ("tpu", "unknown device 'tpu'"),
    ],
)
def test_a_device_this_machine_lacks(cli, client, device, message, monkeypatch):
    """On a machine with the CPU alone, as this process sees it, whatever it really has."""
    monkeypatch.setattr(devices, "available", lambda: ["cpu"])
    assert_one_line_error(cli("train", "--device", device, *SMALL), message)
    assert_no_run(client)


# A device index this machine lacks, whatever it has; and what it has.
ABSENT = f"cuda:{torch.cuda.device_count()}"
HERE = ", ".join(devices.available())


def test_device_error_in_a_real_process(store, tmp_path):
    """As users see it: the exit status and stderr of a real process."""
    result = pipeline_process("train", "--device", ABSENT, "--tracking-uri", store, cwd=tmp_path)
    assert_one_line_error(result, ABSENT, f"this machine has: {HERE}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-0.1"], "--lr"),
        (["--dataset", "cifar"], "--dataset"),
        (["--loader", "magic"], "--loader"),
    ],
)
def test_bad_numbers_and_choices(cli, client, args, message):
    assert_one_line_error(cli("train", "--device", "cpu", *SMALL, *args), message)
    assert_no_run(client)


def test_offline_download_names_the_two_ways_out(cli, client, tmp_path, monkeypatch):
    # Stand in for "no internet" without touching the network: a mirror nothing listens on.
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    empty = tmp_path / "empty"
    result = cli("train", "--device", "cpu", "--data-dir", str(empty), data=False)
    assert_one_line_error(result, "could not download FashionMNIST", "--data-dir", "synthetic")
    assert_no_run(client)


def test_truncated_idx_file(cli, client, tmp_path):
    root = data.write_synthetic(tmp_path, seed=0, train_size=64, test_size=64)
    images = root / "SyntheticFashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    result = cli(
        "train",
        "--device",
        "cpu",
        "--dataset",
        "synthetic",
        "--train-size",
        "64",
        "--test-size",
        "64",
        "--data-dir",
        str(tmp_path),
        data=False,
    )
    assert_one_line_error(result, "corrupt or truncated IDX file")
    assert_no_run(client)
