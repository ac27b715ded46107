"""The train and test stages, end to end through the CLI, asserting what lands in MLflow."""

import math

import pytest
import torch
from conftest import SMALL, only_run
from torch.utils.data import DataLoader

from pipeline import devices
from pipeline.config import workload
from pipeline.schema import Metrics, Params, Stages, Tags
from pipeline.tracking import runs as tracking
from pipeline.training import data, loops, model

BATCHES_PER_EPOCH = 10  # 640 images / batch 64


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def values(client, run_id, key):
    return [m.value for m in client.get_metric_history(run_id, key)]


def test_train_logs_the_run_schema(cli, client):
    result = cli("train", "--device", "cpu", "--epochs", "2", *SMALL)
    assert result.code == 0, result.stderr
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        Params.DEVICE: "cpu",
        Params.DATASET: "synthetic",
        Params.MODEL: "mlp-784-512-512-10",
        Params.PRECISION: "fp32",
        Params.PARAMETERS: "669706",
        Params.HIDDEN: "512",
        Params.LAYERS: "2",
        Params.EPOCHS: "2",
        Params.BATCH_SIZE: "64",
        Params.LR: "0.05",
        Params.OPTIMIZER: "sgd",
        Params.SEED: "0",
        Params.LOADER: "tensors",
        Params.TRAIN_SIZE: "640",
        Params.TEST_SIZE: "128",
        Params.INPUT_SHAPE: "1x28x28",
        Params.NUM_CLASSES: "10",
        Params.SHUFFLE: "false",
        Params.WEIGHT_DECAY: "0.0",
        Params.MOMENTUM: "0.0",
        Params.COMPILE: "none",
        Params.WORKERS: "0",
        Params.PIN_MEMORY: "false",
    }
    tags = run.data.tags
    assert tags[Tags.STAGE] == Stages.TRAIN
    assert tags[Tags.DEVICE_TYPE] == "cpu"
    assert tags[Tags.DEVICE_NAME] == devices.cpu_name()
    assert tags[Tags.TORCH_VERSION] == torch.__version__
    for tag in (Tags.HOST, Tags.PYTHON_VERSION, Tags.PLATFORM, Tags.MLFLOW_VERSION):
        assert tags[tag]
    run_id = run.info.run_id
    assert steps(client, run_id, Metrics.TRAIN_LOSS) == list(range(2 * BATCHES_PER_EPOCH))
    assert all(math.isfinite(v) for v in values(client, run_id, Metrics.TRAIN_LOSS))
    for key in (Metrics.TEST_ACCURACY, Metrics.TEST_LOSS, Metrics.EPOCH_TIME_S):
        assert steps(client, run_id, key) == [1, 2]
    assert all(0 <= a <= 1 for a in values(client, run_id, Metrics.TEST_ACCURACY))
    m = run.data.metrics
    epoch_times = values(client, run_id, Metrics.EPOCH_TIME_S)
    timed = m[Metrics.TRAIN_TIME_S] + m[Metrics.EVAL_TIME_S] + m[Metrics.EVAL_WARM_UP_S]
    assert timed == pytest.approx(sum(epoch_times))  # the warm-up batch in the first epoch's
    assert m[Metrics.WALL_TIME_S] > m[Metrics.TRAIN_TIME_S] + m[Metrics.EVAL_TIME_S]
    assert m[Metrics.FIRST_EPOCH_TIME_S] == pytest.approx(epoch_times[0])
    assert m[Metrics.SAMPLES_PER_S] > 0
    artifacts = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/MLmodel", "model/data"} <= artifacts  # an MLflow model
    assert run_id in result.stdout


def test_training_learns_on_the_synthetic_data(cli, client):
    assert cli("train", "--device", "cpu", "--epochs", "5", *SMALL, "--lr", "0.1").code == 0
    run_id = only_run(client).info.run_id
    losses = values(client, run_id, Metrics.TEST_LOSS)
    assert losses[-1] < losses[0] < math.log(10)
    assert values(client, run_id, Metrics.TEST_ACCURACY)[-1] > 0.5  # chance is 0.1


def test_one_seed_gives_identical_weights_batches_and_losses(cli, client):
    """Every device starts from the same weights and sees the same batches in the same order:
    here, two runs with one seed, once through each loader, agree loss for loss."""
    a = model.initialised({"model": "mlp", "hidden": 32, "layers": 2}, 7, torch.device("cpu"))
    b = model.initialised({"model": "mlp", "hidden": 32, "layers": 2}, 7, torch.device("cpu"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)

    for loader in ("tensors", "dataloader"):
        args = ("train", "--device", "cpu", "--epochs", "1", "--loader", loader, *SMALL)
        assert cli(*args, "--run-name", loader).code == 0
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs(["0"])}
    a, b = (values(client, runs[name], Metrics.TRAIN_LOSS) for name in ("tensors", "dataloader"))
    assert len(a) == BATCHES_PER_EPOCH and a == b


def test_per_batch_losses_reach_the_store_in_batches(cli, client, monkeypatch):
    """No round trip to the tracking store per training batch: one series per epoch, sent in
    requests of up to 1,000 points."""
    series = []
    original = tracking.Run.log_series

    def recording(self, key, first_step, values):
        series.append((key, first_step, values))
        return original(self, key, first_step, values)

    monkeypatch.setattr(tracking.Run, "log_series", recording)
    assert cli("train", "--device", "cpu", "--epochs", "2", *SMALL).code == 0
    assert [(key, first, len(values)) for key, first, values in series] == [
        (Metrics.TRAIN_LOSS, 0, BATCHES_PER_EPOCH),
        (Metrics.TRAIN_LOSS, BATCHES_PER_EPOCH, BATCHES_PER_EPOCH),
    ]
    run_id = only_run(client).info.run_id
    assert steps(client, run_id, Metrics.TRAIN_LOSS) == list(range(2 * BATCHES_PER_EPOCH))


def test_a_series_is_logged_in_requests_of_1000(client, monkeypatch):
    requests = []
    original = tracking.MlflowClient.log_batch

    def counting(self, run_id, metrics=(), **kw):
        requests.append(len(metrics))
        return original(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(tracking.MlflowClient, "log_batch", counting)
    run = tracking.Run.start(client, "0", "series", {})
    run.log_series(Metrics.TRAIN_LOSS, 5, [float(i) for i in range(2345)])
    assert requests == [1000, 1000, 345]
    assert steps(client, run.run_id, Metrics.TRAIN_LOSS) == list(range(5, 2350))


def test_the_training_loop_never_reads_a_value_back_to_the_host(monkeypatch):
    """No .item(), .tolist() or float() per batch: each would wait for the device."""
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    net = model.build(hidden=16)
    buffer = loops.LossBuffer(4, torch.device("cpu"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the training loop")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    loops.train_epoch(net, data.TensorBatches(x, y, 64), optimizer, buffer)
    monkeypatch.undo()
    assert buffer.count == 4
    first_step, losses = buffer.drain()
    assert first_step == 0 and len(losses) == 4 and buffer.next_step == 4


def test_test_stage_evaluates_a_logged_model(cli, client, monkeypatch):
    assert cli("train", "--device", "cpu", "--epochs", "2", *SMALL).code == 0
    source = only_run(client)
    testing = ("test", "--model-uri", f"runs:/{source.info.run_id}/model", "--device", "cpu")
    result = cli(*testing)
    assert result.code == 0, result.stderr
    with monkeypatch.context() as patched:  # a test split too large to hold on the device
        patched.setattr(data, "free_memory", lambda device: 1000)
        refused = cli(*testing)
        assert refused.code == 2 and "; use --loader dataloader" in refused.stderr
        fed = cli(*testing, "--loader", "dataloader")  # what the line says works
    assert fed.code == 0, fed.stderr
    runs = client.search_runs(
        ["0"], filter_string=f"tags.`{Tags.STAGE}` = 'test'", order_by=["start_time ASC"]
    )
    assert len(runs) == 2 and runs[1].data.params[Params.LOADER] == "dataloader"
    for key in (Metrics.TEST_ACCURACY, Metrics.TEST_LOSS):  # the same values either way
        assert runs[1].data.metrics[key] == pytest.approx(runs[0].data.metrics[key], abs=1e-6)
    test_run = runs[0]
    assert test_run.info.status == "FINISHED"
    assert test_run.data.tags[Tags.SOURCE_RUN_ID] == source.info.run_id
    assert test_run.data.params == source.data.params  # same configuration, same device here
    # The same weights on the same device give the same figures as the train run's last epoch.
    for key in (Metrics.TEST_ACCURACY, Metrics.TEST_LOSS):
        assert test_run.data.metrics[key] == pytest.approx(source.data.metrics[key], abs=1e-6)
    assert steps(client, test_run.info.run_id, Metrics.TEST_ACCURACY) == [2]


def test_test_stage_with_a_missing_model_is_a_usage_error(cli, client):
    result = cli("test", "--model-uri", "runs:/0123456789abcdef/model", "--device", "cpu")
    assert result.code == 2
    assert "no model logged" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    exp = client.get_experiment_by_name("Default")
    assert client.search_runs([exp.experiment_id]) == []


def test_devices_lists_this_machine(cli):
    result = cli("devices")
    assert result.code == 0
    assert "cpu" in result.stdout and devices.cpu_name() in result.stdout
    assert f"torch={torch.__version__}" in result.stdout
    assert "mps_built=" in result.stdout and "cuda_built=" in result.stdout


def test_runs_read_well_in_the_ui(cli, client):
    """Names that say what a run is (unique without a random suffix), a one-sentence
    description, system metrics, and a plot of its curves."""
    args = ("train", "--device", "cpu", "--epochs", "3", *SMALL, "--train-size", "6400")
    assert cli(*args, "--system-metrics-interval", "0.1").code == 0  # a run of a second or two
    assert cli(*args, "--no-system-metrics").code == 0
    runs = sorted(client.search_runs(["0"]), key=lambda r: r.info.start_time)
    assert [r.info.run_name for r in runs] == [
        "cpu-synthetic-mlp512x2-fp32-bs64",
        "cpu-synthetic-mlp512x2-fp32-bs64-2",
    ]
    first, second = runs
    note = first.data.tags[Tags.NOTE]
    accuracy = first.data.metrics[Metrics.TEST_ACCURACY]
    assert note.startswith(
        "mlp-784-512-512-10 (fp32) trained on synthetic (6400 images) for 3 epochs"
    )
    assert f"test accuracy {accuracy:.1%}" in note and "samples/s" in note
    cpu_samples = client.get_metric_history(first.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu_samples) >= 2
    assert not any(k.startswith("system/") for k in second.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert "curves.png" in artifacts


# A workload's params as every run recorded before data sets, optimizers and compilation
# became options: the tag pipeline.workload such a run carries.
EARLIER = {
    "dataset": "fashion-mnist",
    "train_size": 60000,
    "test_size": 10000,
    "model": "mlp-784-512-512-10",
    "precision": "fp32",
    "optimizer": "sgd",
    "batch_size": 64,
    "lr": 0.001,
    "epochs": 10,
    "seed": 0,
    "loader": "tensors",
}
AT_OLD_DEFAULTS = {
    Params.INPUT_SHAPE: "1x28x28",
    Params.NUM_CLASSES: 10,
    Params.SHUFFLE: "false",
    Params.WEIGHT_DECAY: 0.0,
    Params.MOMENTUM: 0.0,
    Params.COMPILE: "none",
    Params.WORKERS: 0,
    Params.PIN_MEMORY: "false",
}


def test_a_new_key_at_its_old_default_splits_nothing():
    earlier = '{"batch_size":"64","dataset":"fashion-mnist","epochs":"10","loader":"tensors",'
    earlier += '"lr":"0.001","model":"mlp-784-512-512-10","optimizer":"sgd","precision":"fp32",'
    earlier += '"seed":"0","test_size":"10000","train_size":"60000"}'
    assert workload(EARLIER) == earlier
    assert workload(EARLIER | AT_OLD_DEFAULTS) == earlier  # groups with the runs before
    for key, other in [
        (Params.INPUT_SHAPE, "3x32x32"),
        (Params.NUM_CLASSES, 100),
        (Params.SHUFFLE, "true"),
        (Params.OPTIMIZER, "adamw"),
        (Params.WEIGHT_DECAY, 0.01),
        (Params.MOMENTUM, 0.9),
        (Params.COMPILE, "default"),
        (Params.WORKERS, 2),
        (Params.PIN_MEMORY, "true"),
        (Params.DATASET, "cifar10"),
    ]:
        assert workload(EARLIER | AT_OLD_DEFAULTS | {key: other}) != earlier, key


@pytest.mark.parametrize(
    ("name", "options", "kind"),
    [
        ("sgd", {"momentum": 0.9, "weight_decay": 0.01}, torch.optim.SGD),
        ("adamw", {"weight_decay": 0.05}, torch.optim.AdamW),
    ],
)
def test_the_optimizer_with_its_options_fused_on_cuda(name, options, kind):
    params = [torch.nn.Parameter(torch.ones(3))]
    for device, fused in (("cpu", None), ("cuda", True)):
        opt = loops.optimizer(params, 0.1, torch.device(device), name, **options)
        assert type(opt) is kind and opt.defaults["fused"] is fused
        assert all(opt.defaults[k] == v for k, v in options.items())


def test_adamw_trains_and_is_recorded(cli, client):
    args = ("--optimizer", "adamw", "--weight-decay", "0.01", "--lr", "0.001")
    result = cli("train", "--device", "cpu", "--epochs", "1", *SMALL, *args)
    assert result.code == 0, result.stderr
    run = only_run(client)
    p = run.data.params
    assert (p[Params.OPTIMIZER], p[Params.WEIGHT_DECAY], p[Params.MOMENTUM]) == (
        "adamw",
        "0.01",
        "0.0",
    )
    assert '"optimizer":"adamw","precision"' in run.data.tags[Tags.WORKLOAD]
    assert '"weight_decay":"0.01"' in run.data.tags[Tags.WORKLOAD]


def test_compile_where_torch_cannot_is_one_line_and_no_run(cli, client, monkeypatch):
    def cannot(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this device\nmore lines")

    monkeypatch.setattr(torch, "compile", cannot)
    result = cli("train", "--device", "cpu", "--epochs", "1", *SMALL, "--compile", "default")
    assert result.code == 2 and result.stderr.strip().splitlines() == [
        "error: --compile default: torch.compile does not work on cpu: Dynamo is not supported "
        "on this device"
    ]
    assert client.get_experiment_by_name("Default") is None or not client.search_runs(["0"])


def test_compilation_of_every_batch_shape_comes_before_the_timed_epochs(monkeypatch):
    """10 training images at batch 4 (batches of 4, 4, 2), shuffled, and 6 test images (4, 2):
    every graph torch.compile makes, the partial batches' included, is made before the first
    epoch starts, and the run then trains exactly as an eager run does: the cnn's dropout
    draws the same masks, so the warm-up (its reading of the batches included) left the
    random state, the weights and the optimizer as they were. The observable: a compiler
    backend of the test's own (torch.compile's public `backend`), called once per graph."""
    made, phase = [], ["compile"]

    def backend(graph, example_inputs):
        made.append(phase[0])
        return graph.forward  # the graph run eagerly: the same arithmetic as eager

    def compiled(net, mode):
        return net if mode == "none" else torch.compile(net, backend=backend)

    monkeypatch.setattr(loops, "compiled", compiled)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28, generator=generator), torch.arange(16) % 10

    class Drawing(data.TensorBatches):  # draws from the global generator, as a DataLoader's
        def __iter__(self):  # iterator does for its workers' base seed
            torch.rand(1)
            return super().__iter__()

    train = Drawing(x[:10], y[:10], 4, data.Order(10, True, 0))
    test = data.TensorBatches(x[10:], y[10:], 4)
    cpu, adamw = torch.device("cpu"), {"name": "adamw", "weight_decay": 0.1}
    trained = {}
    for mode in ("none", "default"):
        torch.compiler.reset()
        cnn = {"model": "cnn", "input_shape": [1, 28, 28], "num_classes": 10}
        net = model.initialised(cnn, 0, cpu)

        def epoch_starts():
            phase[0] = "epoch"

        run = loops.fit(net, train, test, 2, 0.01, cpu, loops.LossBuffer(6, cpu), lambda: None,
                        None, adamw, mode, epoch_starts)  # fmt: skip
        trained[mode] = (list(run), net.state_dict())
        phase[0] = "compile"
    (eager, eager_weights), (compiled, compiled_weights) = trained["none"], trained["default"]
    assert len(made) >= 3 and set(made) == {"compile"}  # train and eval graphs, no epoch's
    assert compiled[0].compile_s > 0 and compiled[1].compile_s == eager[0].compile_s == 0
    for key, value in eager_weights.items():  # the warm-up steps left no trace
        assert torch.equal(compiled_weights[key], value), key
    assert [e.test_loss for e in compiled] == [e.test_loss for e in eager]


def test_dataloader_workers_and_pinned_memory_are_used_and_recorded(cli, client, monkeypatch):
    made = []
    monkeypatch.setattr(
        data, "DataLoader", lambda *a, **kw: made.append(kw) or DataLoader(*a, **kw)
    )
    args = ("--loader", "dataloader", "--workers", "1", "--pin-memory")
    result = cli(
        "train", "--device", "cpu", "--epochs", "1", *SMALL, *args, "--profile-batches", "0"
    )
    assert result.code == 0, result.stderr
    assert made[0]["num_workers"] == 1 and made[0]["pin_memory"] is True
    p = only_run(client).data.params
    assert (p[Params.WORKERS], p[Params.PIN_MEMORY]) == ("1", "true")
