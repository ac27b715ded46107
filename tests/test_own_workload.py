"""A user's own workload through every command, as real processes in an empty folder: their
factory model on their factory data set of 3×32×32 images with 100 classes (train, test from
the run's weights, doctor, a sweep of eager against compiled, compare), and an image folder of
PNGs (shuffled, the same order in two runs)."""

import json
from pathlib import Path

import numpy as np
from conftest import pipeline_in
from mlflow import MlflowClient
from PIL import Image

from pipeline.schema import Metrics, Params, Stages, Tags

QUICK = ["--device", "cpu", "--no-system-metrics", "--profile-batches", "0", "--quiet"]

MYWORK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 32, 32, generator=generator)
    y = torch.arange(200) % 100
    return TensorDataset(x[:160], y[:160]), TensorDataset(x[160:], y[160:])


def net(input_shape, num_classes, width=16):
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes)
    )
"""


def runs(folder: Path) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client.search_runs(["0"], max_results=100, order_by=["attributes.start_time ASC"])


def test_your_factory_model_on_your_factory_data_through_every_command(tmp_path):
    (tmp_path / "mywork.py").write_text(MYWORK)
    workload = ["--dataset", "mywork:data", "--model", "mywork:net"]
    pipeline_in(tmp_path, "train", *QUICK, *workload, "--epochs", "2", "--batch-size", "32")
    (trained,) = runs(tmp_path)
    p = trained.data.params
    assert (p[Params.INPUT_SHAPE], p[Params.NUM_CLASSES], p[Params.SHUFFLE]) == (
        "3x32x32",
        "100",
        "true",
    )
    model_uri = f"runs:/{trained.info.run_id}/model"
    pipeline_in(tmp_path, "test", "--model-uri", model_uri, "--device", "cpu", "--quiet")

    checked = pipeline_in(tmp_path, "doctor", "--device", "cpu", *workload, "--quiet")
    assert "checks passed" in checked.stdout

    sweep = ["--devices", "cpu", "--batch-sizes", "32", "--models", "mywork:net", "--quiet"]
    sweep += ["--dataset", "mywork:data", "--compile", "none,default", "--epochs", "2"]
    pipeline_in(tmp_path, "sweep", *sweep)
    pipeline_in(tmp_path, "compare", "--no-fail", "--output-json", "findings.json")

    every = runs(tmp_path)
    assert [r.info.status for r in every] == ["FINISHED"] * len(every)
    stages = [r.data.tags[Tags.STAGE] for r in every]
    assert stages.count(Stages.TEST) == stages.count(Stages.DOCTOR) == 1
    (test_run,) = [r for r in every if r.data.tags[Tags.STAGE] == Stages.TEST]
    assert test_run.data.tags[Tags.SOURCE_RUN_ID] == trained.info.run_id
    (doctor_run,) = [r for r in every if r.data.tags[Tags.STAGE] == Stages.DOCTOR]
    assert doctor_run.data.params[Params.INPUT_SHAPE] == "3x32x32"
    children = {r.data.params.get(Params.COMPILE): r for r in every if Tags.PARENT in r.data.tags}
    assert set(children) == {"none", "default"}  # eager beside compiled, on one device
    assert children["default"].data.metrics[Metrics.COMPILE_TIME_S] > 0
    assert Metrics.COMPILE_TIME_S not in children["none"].data.metrics
    assert "the run is compiled (default)" in children["default"].data.tags[Tags.PROFILE_STEP]
    groups = json.loads((tmp_path / "findings.json").read_text())["groups"]
    eager, compiled = sorted(groups, key=lambda g: g["params"].get(Params.COMPILE, "none"))[::-1]
    assert len(eager["runs"]) == 2  # the train run and the sweep's eager child: one workload
    assert compiled["params"][Params.COMPILE] == "default"
    assert "dataset=mywork:data" in compiled["title"] and "input_shape=3x32x32" in compiled["title"]


def write_pngs(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog", "owl"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_an_image_folder_shuffled_in_the_same_order_in_two_runs(tmp_path):
    write_pngs(tmp_path / "pets")
    args = ["--dataset", "imagefolder:pets", "--input-shape", "3x8x8", "--batch-size", "4"]
    args += ["--epochs", "2", "--lr", "0.05", *QUICK]
    for _ in range(2):
        pipeline_in(tmp_path, "train", *args)
    first, second = runs(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def losses(run):
        history = client.get_metric_history(run.info.run_id, Metrics.TRAIN_LOSS)
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    assert first.data.params[Params.SHUFFLE] == "true"
    assert first.data.params[Params.INPUT_SHAPE] == "3x8x8"
    assert first.data.params[Params.NUM_CLASSES] == "3"
    assert len(losses(first)) == 2 * 5 and losses(first) == losses(second)  # 18 images, batch 4
    model_uri = f"runs:/{first.info.run_id}/model"
    pipeline_in(tmp_path, "test", "--model-uri", model_uri, "--device", "cpu", "--quiet")
    pipeline_in(tmp_path, "compare", "--no-fail", "--output-json", "findings.json")
    (group,) = json.loads((tmp_path / "findings.json").read_text())["groups"]
    assert len(group["runs"]) == 2
