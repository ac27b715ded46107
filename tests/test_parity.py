"""The device parity probe, reached on the CPU through an honestly labelled stand-in device."""

import copy

import torch
from conftest import SMALL, only_run
from torch import nn

from pipeline.schema import Metrics
from pipeline.training import data, loops, model


class RolledLogitsStandIn(nn.Module):
    """NOT a GPU: the CPU with every logit shifted one class over, standing in for a device
    whose numerics are broken (as mps's accuracy was in 2022)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).roll(1, dims=1)


class NoisyLogitsStandIn(RolledLogitsStandIn):
    """NOT a GPU: the CPU plus rounding-sized noise, standing in for a healthy accelerator."""

    def forward(self, x):
        return self.net(x) + 1e-6 * torch.randn(
            len(x), 10, generator=torch.Generator().manual_seed(0)
        )


def batches(tmp_path):
    spec = data.DataSpec("synthetic", tmp_path, 0, 64, 320)
    return data.batches(spec, False, "tensors", 64, torch.device("cpu")).with_cpu_inputs()


def test_identical_devices_agree_exactly(tmp_path):
    net = model.build(hidden=32)
    assert loops.parity(net, copy.deepcopy(net), batches(tmp_path)) == loops.Parity(0.0, 1.0, 0.0)


def test_a_device_with_broken_numerics_is_detected(tmp_path):
    net = model.build(hidden=32)
    found = loops.parity(RolledLogitsStandIn(net), net, batches(tmp_path))
    assert found.argmax_agreement < 0.5 and found.max_abs_logit_diff > 0


def test_rounding_noise_is_not_a_disagreement(tmp_path):
    net = model.build(hidden=32)
    found = loops.parity(NoisyLogitsStandIn(net), net, batches(tmp_path))
    assert 0 < found.max_abs_logit_diff < 1e-4 and found.argmax_agreement == 1.0


def two_conversions(tmp_path):
    """(images by the accelerators' table, the same bytes by the CPU's division, labels)."""
    spec = data.DataSpec("synthetic", tmp_path, 0, 64, 320)
    raw = data.batches(spec, False, "tensors", 64, torch.device("cpu"))
    for x, y in zip(raw.x.split(64), raw.y.split(64), strict=True):
        yield data.to_float(x, table=True), data.to_float(x, table=False), y


def test_the_accelerators_conversion_agrees_with_the_cpus_exactly(tmp_path):
    net = model.build(hidden=32)
    found = loops.parity(net, copy.deepcopy(net), two_conversions(tmp_path))
    assert found == loops.Parity(0.0, 1.0, 0.0)


def test_a_table_one_ulp_off_shows_in_the_inputs(tmp_path, monkeypatch):
    """NOT a GPU: the CPU's table made as a GPU divides (x * (1/255)), one ulp off for 126 of
    the 256 values, against the CPU's division."""
    off = torch.arange(256, dtype=torch.uint8).float() * (1 / 255)
    monkeypatch.setattr(data, "_tables", {torch.device("cpu"): off})
    net = model.build(hidden=32)
    found = loops.parity(net, copy.deepcopy(net), two_conversions(tmp_path))
    assert found.input_mismatch > 0.01


def test_the_probe_reads_a_fixed_number_of_batches(tmp_path):
    seen = []
    net = model.build(hidden=8)

    class Counting(list):
        def __iter__(self):
            for item in super().__iter__():
                seen.append(1)
                yield item

    loops.parity(net, net, Counting(batches(tmp_path)), num_batches=3)
    assert len(seen) == 3


def test_the_probe_is_skipped_on_the_cpu(cli, client):
    assert cli("train", "--device", "cpu", "--epochs", "1", *SMALL).code == 0
    metrics = only_run(client).data.metrics
    assert Metrics.PARITY_ARGMAX_AGREEMENT not in metrics
    assert Metrics.PARITY_MAX_ABS_LOGIT_DIFF not in metrics
