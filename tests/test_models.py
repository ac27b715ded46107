"""Workloads beyond the MLP: a conv net, a small vision transformer, the user's own model, and
the precisions a device offers."""

import pytest
import torch
from conftest import SMALL, only_run
from test_compare import compare_json, kinds, log_run
from test_errors import assert_no_run, assert_one_line_error

from pipeline.errors import UserError
from pipeline.schema import Metrics, Params
from pipeline.training import model

ONE_EPOCH = ("train", "--device", "cpu", "--epochs", "1", *SMALL, "--no-system-metrics")


@pytest.mark.parametrize(("name", "logged"), [("cnn", "cnn"), ("vit", "vit")])
def test_each_built_in_model_trains(cli, client, name, logged):
    result = cli(*ONE_EPOCH, "--model", name)
    assert result.code == 0, result.stderr
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.params[Params.MODEL] == logged
    assert Params.HIDDEN not in run.data.params  # the MLP's options say nothing here
    net = model.build(name)
    assert run.data.params[Params.PARAMETERS] == str(model.parameter_count(net))
    assert run.data.metrics[Metrics.FORWARD_FLOPS] == model.forward_flops(net) > 0
    assert run.info.run_name == f"cpu-synthetic-{name}-fp32-bs64"
    assert len(client.get_metric_history(run.info.run_id, Metrics.TRAIN_LOSS)) == 10


@pytest.mark.parametrize("name", model.BUILT_IN)
def test_one_seed_gives_every_model_the_same_initial_weights(name):
    config = {"model": name, "hidden": 32, "layers": 2}
    a = model.initialised(config, 7, torch.device("cpu")).state_dict()
    b = model.initialised(config, 7, torch.device("cpu")).state_dict()
    c = model.initialised(config, 8, torch.device("cpu")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)


USER_MODELS = """
from torch import nn

def tiny(width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))

def wrong_shape():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 3))

def not_a_module():
    return "a string"

CONSTANT = 3
"""


@pytest.fixture
def user_models(tmp_path):
    (tmp_path / "mymodels.py").write_text(USER_MODELS)  # the cli fixture runs in tmp_path
    yield "mymodels"
    import sys

    sys.modules.pop("mymodels", None)


def test_your_own_model_from_the_current_folder(cli, client, user_models):
    args = (*ONE_EPOCH, "--model", f"{user_models}:tiny", "--model-option", "width=8")
    result = cli(*args)
    assert result.code == 0, result.stderr
    run = only_run(client)
    assert run.data.params[Params.MODEL] == "mymodels:tiny"
    assert run.data.params[Params.MODEL_OPTIONS] == "width=8"
    assert run.data.params[Params.PARAMETERS] == str(784 * 8 + 8 + 8 * 10 + 10)
    assert run.info.run_name == "cpu-synthetic-tiny-fp32-bs64"
    # its logged model can be evaluated elsewhere: config.json rebuilds it
    result = cli("test", "--model-uri", f"runs:/{run.info.run_id}/model", "--device", "cpu")
    assert result.code == 0, result.stderr


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nosuchmodule:make", "cannot import nosuchmodule"),
        ("mymodels:missing", "mymodels has no missing"),
        ("mymodels:CONSTANT", "CONSTANT is not callable"),
        ("mymodels:not_a_module", "the factory returned str"),
        ("mymodels:wrong_shape", "maps [2, 1, 28, 28] to [2, 3], not [2, 10]"),
        ("resnet", "unknown model 'resnet'"),
    ],
)
def test_a_bad_model_reference_is_one_line_and_no_run(cli, client, user_models, reference, message):
    result = cli(*ONE_EPOCH, "--model", reference)
    assert_one_line_error(result, message)
    assert_no_run(client)


def test_bf16_on_the_cpu_through_autocast(cli, client, monkeypatch):
    from pipeline import devices

    entered = []
    original = devices.Precision.autocast

    def recording(self):
        entered.append(self.name)
        return original(self)

    monkeypatch.setattr(devices.Precision, "autocast", recording)
    assert cli(*ONE_EPOCH, "--precision", "bf16", "--run-name", "bf16").code == 0
    assert cli(*ONE_EPOCH, "--run-name", "fp32").code == 0
    runs = {r.info.run_name: r for r in client.search_runs(["0"])}
    assert runs["bf16"].data.params[Params.PRECISION] == "bf16"
    assert entered.count("bf16") >= 10  # every training batch, and the test batches

    def losses(name):
        history = client.get_metric_history(runs[name].info.run_id, Metrics.TRAIN_LOSS)
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    bf16, fp32 = losses("bf16"), losses("fp32")
    assert bf16 != fp32  # computed in bfloat16...
    assert bf16 == pytest.approx(fp32, rel=0.05)  # ...from the same weights and batches


def test_a_precision_the_device_lacks_is_one_line(cli, client):
    result = cli(*ONE_EPOCH, "--precision", "tf32")
    assert_one_line_error(result, "precision tf32 is not available on cpu")
    assert_no_run(client)


def test_precision_accuracy_loss(cli, client, tmp_path):
    fp32 = log_run(client, "cuda:0", accuracy=[0.80], params={Params.PRECISION: "fp32"})
    fine = log_run(client, "cuda:0", accuracy=[0.79], params={Params.PRECISION: "bf16"})
    lossy = log_run(client, "cuda:0", accuracy=[0.70], params={Params.PRECISION: "fp16"})
    elsewhere = log_run(
        client, "cuda:0", host="other", accuracy=[0.5], params={Params.PRECISION: "bf16"}
    )  # no fp32 run on that host: nothing to compare with
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, lossy) == ["precision-accuracy-loss"] and result.code == 1
    assert kinds(report, fine) == [] and kinds(report, fp32) == []
    assert kinds(report, elsewhere) == []
    (finding,) = report["findings"]
    assert finding["values"]["fp32_run_id"] == fp32 and finding["values"]["precision"] == "fp16"
    assert "in fp16 reaches 70.0% test accuracy, 10.0% below" in finding["message"]
    assert len(report["groups"]) == 3  # precision is part of what groups runs


def test_compiled_accuracy_unlike_eager_on_the_same_device(cli, client, tmp_path):
    eager = log_run(client, "cpu", accuracy=[0.80])  # no compile param: eager
    wrong = log_run(client, "cpu", accuracy=[0.70], params={Params.COMPILE: "default"})
    fine = log_run(client, "cpu", accuracy=[0.79], params={Params.COMPILE: "max-autotune"})
    better = log_run(client, "cpu", accuracy=[0.90], params={Params.COMPILE: "reduce-overhead"})
    alone = log_run(client, "cpu", host="other", accuracy=[0.5], params={Params.COMPILE: "default"})
    # 128 test images: 10 points apart is within their sampling noise (3·√(2·0.8·0.2/128), 15
    # points); 10,000 images: far past it (1.7 points), as past the 2-point tolerance
    small = {Params.TEST_SIZE: "128"}
    log_run(client, "cpu", accuracy=[0.80], params=small)
    noisy = log_run(client, "cpu", accuracy=[0.70], params={**small, Params.COMPILE: "default"})
    large = {Params.TEST_SIZE: "10000"}
    log_run(client, "cpu", accuracy=[0.80], params=large)
    sure = log_run(client, "cpu", accuracy=[0.77], params={**large, Params.COMPILE: "default"})
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, wrong) == kinds(report, better) == ["compiled-accuracy-mismatch"]
    assert kinds(report, sure) == ["compiled-accuracy-mismatch"]
    assert kinds(report, fine) == kinds(report, eager) == kinds(report, alone) == []
    assert kinds(report, noisy) == []
    (finding, *_) = [f for f in report["findings"] if f["run_id"] == wrong]
    assert finding["values"]["eager_run_id"] == eager and finding["values"]["compile"] == "default"
    assert "compiled (default) reaches 70.0% test accuracy, 10.0% below" in finding["message"]
    _, report = compare_json(cli, tmp_path, "--run-id", wrong)  # its eager twin read for it
    assert kinds(report) == ["compiled-accuracy-mismatch"]


def test_a_selected_compiled_run_reads_back_to_its_eager_twin():
    from pipeline.compare.baselines import needs_met
    from pipeline.compare.records import RunSummary

    def run(start, compile_mode):
        params = {Params.MODEL: "mlp", Params.COMPILE: compile_mode}
        tags = {"pipeline.stage": "train", "pipeline.device": "cpu", "pipeline.host": "box"}
        return RunSummary(str(start), "r", "0", start, "FINISHED", params, {}, tags)

    eager, earlier, selected = run(1, "none"), run(2, "default"), run(3, "default")
    assert not needs_met([selected], [selected, earlier], 1, {})
    assert needs_met([selected], [selected, earlier, eager], 1, {})


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("mlp", (3, 32, 32), 100),
        ("cnn", (3, 32, 32), 100),
        ("cnn", (1, 64, 48), 3),
        ("vit", (3, 32, 32), 100),
        ("vit", (4, 30, 20), 5),
    ],
)
def test_each_built_in_model_takes_any_shape(name, shape, classes):
    config = {"model": name, "hidden": 16, "layers": 1, "input_shape": shape}
    net = model.checked(config | {"num_classes": classes})  # a batch of the real shape
    assert net(torch.zeros(3, *shape)).shape == (3, classes)
    assert model.forward_flops(net, shape) > 0


def test_vit_patches_default_to_the_largest_divisor_of_the_side_up_to_8():
    assert [model.default_patch(s) for s in ((1, 28, 28), (3, 32, 32), (3, 30, 20))] == [7, 8, 5]
    vit = model.build("vit", input_shape=(3, 32, 32), patch=4)
    assert vit.patch == 4 and vit.position.shape[1] == 8 * 8 + 1
    with pytest.raises(UserError, match="--patch 5 does not divide the images' 32x32"):
        model.build("vit", input_shape=(3, 32, 32), patch=5)


SHAPED_MODELS = """
from torch import nn

def shaped(input_shape, num_classes, width=8):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.Linear(width, num_classes))

def fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
"""


def test_a_factory_is_given_the_data_shape_and_checked_on_it(tmp_path, monkeypatch):
    (tmp_path / "shapedmodels.py").write_text(SHAPED_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    shape = {"input_shape": (3, 32, 32), "num_classes": 100}
    net = model.checked({"model": "shapedmodels:shaped", "options": {"width": 4}} | shape)
    assert net[1].in_features == 3072 and net[2].out_features == 100
    with pytest.raises(UserError, match=r"'shapedmodels:fixed' fails on a \[2, 3, 32, 32\] batch"):
        model.checked({"model": "shapedmodels:fixed"} | shape)


def test_doctor_records_the_step_on_the_real_shape_with_its_optimizer():
    from pipeline.doctor import replay

    config = {"model": "mlp", "hidden": 8, "layers": 1, "input_shape": [3, 16, 16]}
    calls = replay.record_step(config | {"num_classes": 5}, "fp32", optimizer={"name": "adamw"})
    names = {func.name() for func, _, _ in calls}
    shapes = {tuple(a.shape) for _, flat, _ in calls for a in flat if isinstance(a, torch.Tensor)}
    assert (64, 3, 16, 16) in shapes and (64, 5) in shapes  # the batch and its logits
    assert {"aten::lerp_.Scalar", "aten::addcdiv_"} <= names  # AdamW's step, not SGD's


def test_flops_of_a_model_whose_batch_norm_sees_one_value_per_channel():
    """A resnet's last block at 1x1: batch norm in training mode refuses a batch of one."""
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))
    assert model.forward_flops(net, (3, 8, 8)) == 3 * 4 * 9 * 36 * 2
