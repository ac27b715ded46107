"""What a GPU run records, checked on the CPU where each flag and code path exists in the CPU
build: precisions set once through torch's one API and recorded, override variables named,
the same image bytes on every device, warm evaluation timing, and a Mac described as it is.
Stand-in devices are the CPU, labelled so."""

import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import SMALL, pipeline_in, user_env
from mlflow import MlflowClient
from test_compare import log_run
from test_doctor import CPU, broken, stand_in
from torchvision.transforms import ToTensor

from pipeline import devices
from pipeline.compare import changes as environment
from pipeline.compare import stage as compare
from pipeline.doctor import battery
from pipeline.doctor import checks as doctor
from pipeline.schema import Metrics, Tags
from pipeline.tracking import process
from pipeline.training import data, loops


@pytest.mark.parametrize(
    ("precision", "math"), [("fp32", "ieee"), ("tf32", "tf32"), ("bf16", "ieee"), ("fp16", "ieee")]
)
def test_each_precision_sets_fp32_math_through_one_api(precision, math, ieee_after):
    """Read back through torch: fp32 is IEEE for matmuls and convolutions, tf32 is TF32 for
    both (forward and backward: set for the process, not around the forward pass)."""
    settings = devices.Precision(precision, CPU).apply()
    assert torch.backends.cuda.matmul.fp32_precision == math
    assert torch.backends.cudnn.conv.fp32_precision == math
    assert settings == {"matmul": math, "conv": math, "override": "none"}


@pytest.fixture
def ieee_after():
    """The process's fp32 math back to IEEE after the test, passed or failed."""
    yield
    devices.set_fp32_math("ieee")


def train(folder, data_dir, env):
    args = ["train", "--device", "cpu", "--epochs", "1", *SMALL, "--data-dir", str(data_dir)]
    pipeline_in(folder, *args, "--quiet", env=env)


def test_runs_record_their_fp32_math_and_any_override(tmp_path, data_dir):
    train(tmp_path, data_dir, user_env())
    train(tmp_path, data_dir, user_env(NVIDIA_TF32_OVERRIDE="1"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    plain, overridden = sorted(client.search_runs(["0"]), key=lambda r: r.info.start_time)
    for run in (plain, overridden):
        assert run.data.tags[Tags.FP32_MATMUL] == "ieee"
        assert run.data.tags[Tags.FP32_CONV] == "ieee"
    assert plain.data.tags[Tags.TF32_OVERRIDE] == "none"
    assert overridden.data.tags[Tags.TF32_OVERRIDE] == "NVIDIA_TF32_OVERRIDE=1"
    diff = environment.changed(compare.summarize(overridden), [compare.summarize(plain)])
    assert diff == {"tf32_override": ["none", "NVIDIA_TF32_OVERRIDE=1"]}
    assert "TF32 override none -> NVIDIA_TF32_OVERRIDE=1" in environment.describe_changes(diff)


def test_the_byte_table_is_totensors_values_for_every_byte():
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    expected = ToTensor()(every).flatten()
    assert torch.equal(data.BYTE_TO_FLOAT, expected)  # bit for bit
    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(data.to_float(every), expected)  # the CPU's division
    assert torch.equal(data.to_float(every, table=True), expected)  # every accelerator's lookup
    # what a GPU does with a division by a scalar, and why the table is needed
    assert int((torch.arange(256).float() * (1 / 255) != expected).sum()) == 126


def test_a_conversion_one_ulp_off_fails_doctors_check():
    """NOT a GPU: the CPU with its byte division one ulp high for odd bytes."""
    check = next(c for c in battery.CHECKS if c.name == "uint8->float32 scaling, as ToTensor")
    off = broken(
        {torch.Tensor.div_},
        lambda a, k, r: torch.where(
            (r * 255).round().to(torch.int64) % 2 == 1, torch.nextafter(r, torch.tensor(2.0)), r
        ),
    )
    result = doctor.run_check(check, stand_in("byte division one ulp off", off))
    assert result.status == "fail" and result.max_abs_diff <= 1.2e-7  # one ulp below 1
    assert doctor.run_check(check, doctor.on(CPU)).status == "pass"


def test_compare_flags_a_device_whose_inputs_differ(cli, client, tmp_path):
    from test_compare import compare_json, kinds

    log_run(client, "cpu")
    bad = log_run(client, "cuda:0", summary={Metrics.PARITY_INPUT_MISMATCH: 0.0123})
    _, report = compare_json(cli, tmp_path)
    assert kinds(report, bad) == ["device-input-mismatch"]
    message = report["findings"][0]["message"]
    assert "1.23% of the input values" in message and "conversion is wrong" in message


class ColdFirstCall(torch.nn.Module):
    """NOT a GPU: the CPU with a one-time cost of 0.5 s on the first batch it sees, as a
    device's first evaluation pays for kernel set-up or shader compilation."""

    def __init__(self):
        super().__init__()
        self.net, self.cold = torch.nn.Linear(784, 10), True

    def forward(self, x):
        if self.cold:
            time.sleep(0.5)
            self.cold = False
        return self.net(x.flatten(1))


def test_timed_evaluation_is_warm(tmp_path):
    spec = data.DataSpec("synthetic", tmp_path, 0, 64, 256)
    batches = data.batches(spec, False, "tensors", 64, CPU)
    _, _, warm, evaluation = loops.timed_evaluation(ColdFirstCall(), batches, CPU)
    assert warm >= 0.5 and evaluation < 0.25
    # in training, the cost stays in the first epoch's time and out of eval_time_s
    train_batches = data.batches(spec, True, "tensors", 64, CPU)
    model = ColdFirstCall()
    model.cold = False  # training's first batch is the train pass's; arm it for evaluation
    first = None

    class ArmBeforeEvaluation(list):
        """The test batches, the one-time cost armed before the first pass over them."""

        armed = False

        def __iter__(self):
            if not self.armed:
                model.cold = self.armed = True
            return iter(batches)

    losses = loops.LossBuffer(len(train_batches), CPU)
    for epoch in loops.fit(model, train_batches, ArmBeforeEvaluation(), 1, 0.01, CPU, losses):
        first = epoch
    assert first.warm_up_s >= 0.5 and first.eval_time_s < 0.25 and first.time_s >= 0.5


def test_mps_0_is_mps_where_mps_exists(monkeypatch):
    """NOT an Apple GPU: `mps` listed and usable as far as the names go."""
    monkeypatch.setattr(devices, "available", lambda: ["cpu", "mps"])
    monkeypatch.setattr(devices, "unusable", lambda device: None)
    assert devices.resolve("mps:0") == torch.device("mps")
    assert devices.resolve("mps") == torch.device("mps")
    with pytest.raises(devices.UserError, match="not available"):
        devices.resolve("mps:1")


@pytest.mark.parametrize(
    ("listed", "broken", "chosen", "why"),
    [
        (["cpu", "cuda:0", "mps"], set(), "cuda:0", "auto: first usable of cuda:0, mps, cpu"),
        (["cpu", "mps"], set(), "mps", "auto: no usable cuda; first usable of cuda:0, mps, cpu"),
        (["cpu", "cuda:0", "mps"], {"cuda:0"}, "mps", "auto: no usable cuda; first usable of"),
        (["cpu", "cuda:0", "mps"], {"cuda:0", "mps"}, "cpu", "auto: no usable cuda or mps"),
        (["cpu"], set(), "cpu", "auto: no usable cuda or mps"),
    ],
)
def test_auto_says_what_it_chose_and_why(monkeypatch, capsys, listed, broken, chosen, why):
    """NOT a GPU: the devices listed, and those that fail their test operation, stood in."""
    monkeypatch.setattr(devices, "unusable", lambda d: "broken" if str(d) in broken else None)
    device, reason = devices.auto_choice(listed)
    assert str(device) == chosen and reason.startswith(why)
    assert capsys.readouterr().err.count("is listed but unusable (broken)") == len(broken)


def test_the_mps_device_name_comes_from_torch(monkeypatch):
    """NOT an Apple GPU: torch's own functions (which must exist) answering as an M1's."""
    monkeypatch.setattr(torch.backends.mps, "get_name", lambda: "Apple M1")
    monkeypatch.setattr(torch.backends.mps, "get_core_count", lambda: 7)
    assert devices.name(torch.device("mps")) == "Apple M1 (7 GPU cores)"


def test_a_macs_host_name_is_its_local_host_name(monkeypatch):
    """macOS changes a Mac's host name with the network it is on; the local host name stays."""
    calls = []

    def scutil(args, **kw):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "Studio-M2\n", "")

    monkeypatch.setattr(process.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(process.subprocess, "run", scutil)
    assert process.host_name() == "Studio-M2"
    assert calls == [["scutil", "--get", "LocalHostName"]]
    assert process.machine_id().startswith("Studio-M2 ")
