"""End to end: the default `trainkit train`, every file it leaves, and `trainkit eval`."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_trainkit

EPOCH_KEYS = {
    "epoch",
    "step",
    "lr",
    "train/loss",
    "val/loss",
    "val/acc",
    "val/precision",
    "val/recall",
    "val/f1",
    "epoch_time_s",
}
TEST_KEYS = ["test/loss", "test/acc", "test/precision", "test/recall", "test/f1"]


def test_default_run_reaches_96_percent(default_run):
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["test/acc"] >= 0.96  # about 0.97 on 2 CPU cores, seed 0
    assert summary["epochs"] == 30


def test_run_dir_holds_the_composed_config_and_a_log(default_run):
    config = (default_run / ".hydra" / "config.yaml").read_text()
    assert "name: resnet_cifar" in config and "name: sgd" in config
    log = (default_run / "train.log").read_text()
    assert "epoch  30" in log
    summary = json.loads((default_run / "summary.json").read_text())
    # The test metrics the console printed as a table, as one line (once: not the console's).
    (tested,) = [line for line in log.splitlines() if "test metrics: " in line]
    assert f"test/acc {summary['test/acc']:.4f}" in tested
    console = (default_run / "console.txt").read_text()
    assert "test metrics: " not in console


def test_metrics_jsonl_has_one_record_per_epoch(default_run):
    records = [
        json.loads(line) for line in (default_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == list(range(1, 31))
    for record in records:
        assert EPOCH_KEYS <= record.keys()
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[0] > 0 and steps[-1] == 30 * steps[0]
    # Cosine: the lr each epoch starts with never grows.
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_summary_has_best_val_and_test_metrics_per_class_and_confusion(default_run):
    summary = json.loads((default_run / "summary.json").read_text())
    records = [
        json.loads(line) for line in (default_run / "metrics.jsonl").read_text().splitlines()
    ]
    best = max(records, key=lambda r: r["val/acc"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["val/acc"] == pytest.approx(best["val/acc"])
    for key in TEST_KEYS:
        assert 0 <= summary[key] <= (1 if key != "test/loss" else math.inf)
    for metric in ("precision", "recall", "f1"):
        assert all(f"test/{metric}/{c}" in summary for c in range(10))
    matrix = np.array(summary["test/confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 270
    # No float32 noise in what is reported (an F1 of 1.0000001192092896).
    for key, value in summary.items():
        if key.startswith(("val/", "test/")) and isinstance(value, float):
            assert float(f"{value:.7g}") == value, key


def test_predictions_match_the_summary_metrics(default_run):
    """The saved predictions, scored by scikit-learn, give the summary's numbers."""
    with open(default_run / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:3] == ["index", "target", "prediction"]
    assert [f"prob_{c}" for c in range(10)] == list(rows[0])[3:]
    assert len(rows) == 270 and len({r["index"] for r in rows}) == 270
    target = [int(r["target"]) for r in rows]
    predicted = [int(r["prediction"]) for r in rows]
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (probabilities.argmax(axis=1) == predicted).all()
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["test/acc"] == pytest.approx(accuracy_score(target, predicted), abs=1e-6)
    for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = score(target, predicted, average="macro", zero_division=0)
        assert summary[f"test/{name}"] == pytest.approx(expected, abs=1e-5)


def test_checkpoints_load_as_data_only(default_run):
    for name in ("last.pt", "best.pt"):
        state = torch.load(default_run / "checkpoints" / name, weights_only=True)
        for key in ("model", "optimizer", "scheduler", "epoch", "step", "config", "rng"):
            assert key in state
        assert state["config"]["optimizer"]["name"] == "sgd"
    best = torch.load(default_run / "checkpoints" / "best.pt", weights_only=True)
    summary = json.loads((default_run / "summary.json").read_text())
    assert best["epoch"] == summary["best_epoch"]


def test_tensorboard_has_every_metric_the_lr_and_hparams(default_run):
    events = EventAccumulator(str(default_run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/acc", "val/f1", "train/lr", "test/acc", "test/f1"} <= scalars
    # train/, val/ and test/ are the groups (TensorBoard lists groups by name).
    assert {tag.split("/")[0] for tag in scalars} == {"train", "val", "test"}
    assert len(events.Scalars("val/acc")) == 30
    # The planned lr curve, logged at the start, matches the lr that steps actually used
    # (logged every logger.log_every_n_steps=25 steps).
    planned = {e.step: e.value for e in events.Scalars("train/lr_planned")}
    used = {e.step: e.value for e in events.Scalars("train/lr")}
    assert len(planned) == 30 * 20
    assert sorted(used) == list(range(25, 30 * 20 + 1, 25))
    assert all(planned[step] == pytest.approx(used[step], rel=1e-6) for step in used)
    summary = json.loads((default_run / "summary.json").read_text())
    assert events.Scalars("test/acc")[-1].value == pytest.approx(summary["test/acc"])
    columns, values = hparams_of(events)
    assert columns == ["val/acc_best", "test/acc", "train/time_s"]
    assert values == {
        "model": "resnet_cifar",
        "optimizer": "sgd",
        "optimizer.lr": 0.1,
        "data.batch_size": "64",  # TensorBoard would show an int as 64.000
        "scheduler": "cosine",
        "trainer.max_epochs": "30",
    }
    # The Custom Scalars tab: train and val loss on one chart, the monitored metric beside.
    from tensorboard.plugins.custom_scalar import layout_pb2

    (event,) = events.Tensors("custom_scalars__config__")
    (category,) = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0]).category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts["loss: train and val"] == ["train/loss", "val/loss"]
    assert charts["val/acc"] == ["val/acc", "train/acc"]


def hparams_of(events) -> tuple[list[str], dict]:
    """A run's HParams row: its metric columns, and its hyperparameters with their values."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    columns = [info.name.tag for info in experiment.experiment.metric_infos]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = {}
    for key, value in start.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        values[key] = getattr(value, kind)
    return columns, values


def test_tensorboard_shows_the_test_confusion_matrix_at_a_size_that_reads(default_run):
    import io

    from PIL import Image

    events = EventAccumulator(str(default_run), size_guidance={"images": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    (event,) = events.Images("test/confusion_matrix")
    image = Image.open(io.BytesIO(event.encoded_image_string))
    assert min(image.size) >= 600  # ten classes, their names and counts legible


def test_console_shows_epochs_the_run_dir_and_tensorboard(default_run):
    console = (default_run / "console.txt").read_text()
    assert "epoch  30" in console
    assert str(default_run) in console.replace("\n", "")
    assert "tensorboard --logdir" in console


def test_eval_reproduces_the_run_test_metrics(default_run, tmp_path):
    result = run_trainkit(
        "eval",
        f"checkpoint={default_run / 'checkpoints' / 'best.pt'}",
        f"output_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "summary.json").read_text())
    summary = json.loads((default_run / "summary.json").read_text())
    for key in TEST_KEYS:
        assert evaluated[key] == pytest.approx(summary[key], abs=1e-6)
    assert (tmp_path / "predictions.csv").read_text() == (
        default_run / "predictions.csv"
    ).read_text()


def test_eval_accepts_a_run_dir_and_overrides(default_run, tmp_path):
    result = run_trainkit(
        "eval",
        f"checkpoint={default_run}",
        "data.eval_batch_size=7",
        f"output_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "summary.json").read_text())
    summary = json.loads((default_run / "summary.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(summary["test/acc"], abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["checkpoint=nowhere.pt"], "does not exist"),
        (["checkpoint={run}", "data.nope=1"], "unknown key data.nope"),
        (["checkpoint={run}", "optimizer=adamw"], "optimizer=adamw: eval tests the checkpoint's"),
        ([], "eval needs checkpoint=PATH"),
    ],
)
def test_eval_mistakes_are_one_line(default_run, tmp_path, args, message):
    args = [a.format(run=default_run) for a in args]
    result = run_trainkit("eval", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_evals_default_folder_moves_on_past_a_dangling_link(tmp_path):
    from trainkit.cli import _unused_name

    (tmp_path / "eval_best").symlink_to(tmp_path / "nowhere")
    (tmp_path / "eval_best-2").mkdir()
    assert _unused_name(tmp_path / "eval_best") == tmp_path / "eval_best-3"


def test_a_refused_checkpoint_leaves_its_folder_untouched(default_run, tmp_path):
    """eval checks the checkpoint before it makes eval_<name>/ beside it: not even the
    folder's modification time changes."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    damaged = folder / "last.pt"
    damaged.write_bytes((default_run / "checkpoints" / "last.pt").read_bytes()[:1000])
    os.utime(folder, ns=(10**18, 10**18))
    result = run_trainkit("eval", f"checkpoint={damaged}", cwd=tmp_path)
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr, result.stderr
    assert os.listdir(folder) == ["last.pt"] and folder.stat().st_mtime_ns == 10**18


def test_adam_with_cosine_and_step_schedules_train(tmp_path):
    for scheduler in ("cosine", "step"):
        result = run_trainkit(
            "train",
            "optimizer=adam",
            f"scheduler={scheduler}",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=3",  # the lr of each epoch is what is checked
            "trainer.limit_eval_batches=1",
            "scheduler.step_size=1" if scheduler == "step" else "scheduler.min_lr=0.0001",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    records = []
    for metrics in sorted(tmp_path.glob("outputs/*/*/metrics.jsonl")):
        records.append([json.loads(line) for line in metrics.read_text().splitlines()])
    assert len(records) == 2
    step_run = records[1]  # names sort by start time: cosine first, then step
    assert step_run[0]["lr"] == pytest.approx(1e-3) and step_run[1]["lr"] == pytest.approx(1e-4)


def test_the_run_config_the_checkpoint_and_the_hparams_hold_the_effective_config(tmp_path):
    """Setting-type regularizers are written into the config before the run exists: the
    three places a user reads it from agree, with the regularizers' values in them."""
    from omegaconf import OmegaConf

    result = run_trainkit(
        "train",
        "data=synthetic",
        "data.num_samples=200",
        "model=mlp",
        "trainer.max_epochs=1",
        "regularization=[dropout,weight_decay]",
        "regularization.weight_decay.strength=0.001",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    saved = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=True)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved == state["config"]
    assert saved["model"]["dropout"] == 0.5 and saved["optimizer"]["weight_decay"] == 0.001
    events = EventAccumulator(str(run))
    events.Reload()
    _, hparams = hparams_of(events)
    assert hparams["regularization"] == "dropout,weight_decay"
    for key, value in hparams.items():  # each shown value is the effective config's
        node = saved
        for part in key.split("."):
            node = node[part]
        node = node["name"] if key in ("model", "optimizer", "scheduler", "data") else node
        if key != "regularization":
            assert str(value) == str(node), key
