"""`trainkit export`: the model as an ONNX file or a torch.export program, with a dynamic
batch, its data's description inside, and checked against PyTorch before it is written."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch

from tests.test_prediction import trained
from trainkit.cli import main

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra is not installed")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("digits") / "run", "model=mlp", "trainer.max_epochs=2")


def run(cwd, monkeypatch, capsys, *args):
    monkeypatch.chdir(cwd)
    main(list(args))
    return capsys.readouterr().out


def test_onnx_has_a_dynamic_batch_the_datas_description_and_matches_pytorch(
    digits_run, tmp_path, monkeypatch, capsys
):
    import onnx

    said = run(tmp_path, monkeypatch, capsys, "export", f"checkpoint={digits_run}",
               "format=onnx", "output=m.onnx")  # fmt: skip
    assert said.startswith("wrote m.onnx: the largest difference from the PyTorch model on 8 of")
    model = onnx.load(str(tmp_path / "m.onnx"))
    (meta,) = [json.loads(p.value) for p in model.metadata_props if p.key == "trainkit"]
    assert meta["data"]["class_names"] == [str(d) for d in range(10)]
    assert meta["data"]["preprocessing"]["kind"] == "image"
    assert meta["task"]["name"] == "classification"

    state = torch.load(digits_run, weights_only=True)
    from trainkit.registry import MODELS, load_components

    load_components()
    reference = MODELS.build(state["config"]["model"], num_classes=10, input_shape=(1, 8, 8))
    reference.load_state_dict(state["evaluation_model"])
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (1, 3, 11):  # any batch size
        x = torch.randn(batch, 1, 8, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, reference.eval()(x).detach().numpy(), atol=1e-4)


def test_predict_runs_the_onnx_file_as_it_runs_the_checkpoint(
    digits_run, tmp_path, monkeypatch, capsys
):
    from PIL import Image

    for i in range(5):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"{i}.png")
    run(tmp_path, monkeypatch, capsys, "export", f"checkpoint={digits_run}", "output=m.onnx")
    run(tmp_path, monkeypatch, capsys, "predict", "model=m.onnx", "input=.", "output=a.csv")
    run(tmp_path, monkeypatch, capsys, "predict", f"checkpoint={digits_run}", "input=.",
        "output=b.csv")  # fmt: skip
    a, b = (tmp_path / "a.csv").read_text(), (tmp_path / "b.csv").read_text()
    assert [line.split(",")[:2] for line in a.splitlines()] == [
        line.split(",")[:2] for line in b.splitlines()
    ]


def test_torch_export_writes_a_program_with_the_metadata_inside(
    digits_run, tmp_path, monkeypatch, capsys
):
    said = run(tmp_path, monkeypatch, capsys, "export", f"checkpoint={digits_run}",
               "format=torch_export")  # fmt: skip
    assert said.startswith("wrote model.pt2:")
    extra = {"trainkit.json": ""}
    program = torch.export.load(tmp_path / "model.pt2", extra_files=extra)
    assert json.loads(extra["trainkit.json"])["data"]["input_shape"] == [1, 8, 8]
    assert program.module()(torch.randn(6, 1, 8, 8)).shape == (6, 10)


def test_an_export_that_differs_from_pytorch_is_refused_and_not_written(
    digits_run, tmp_path, monkeypatch, capsys
):
    from trainkit import export

    real = export._torch_export

    def off_by_a_bit(model, inputs, metadata, name):
        data, got = real(model, inputs, metadata, name)
        return data, got + 1.0

    monkeypatch.setattr(export, "_torch_export", off_by_a_bit)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["export", f"checkpoint={digits_run}", "format=torch_export"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the exported model differs from the PyTorch model by 1" in line
    assert line.endswith("nothing was written") and list(tmp_path.iterdir()) == []


def test_a_model_that_cannot_be_exported_says_why(tmp_path, monkeypatch, capsys):
    (tmp_path / "branchy.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from trainkit.registry import MODELS\n\n\n"
        "class Branchy(nn.Module):\n"
        "    def __init__(self, classes):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, classes)\n\n"
        "    def forward(self, x):\n"
        "        y = self.fc(x.flatten(1))\n"
        "        if y.sum() > 0:  # a branch on the data: no single graph\n"
        "            return y\n"
        "        return -y\n\n\n"
        "@MODELS.register('branchy')\n"
        "def branchy(num_classes: int) -> nn.Module:\n"
        "    return Branchy(num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    best = trained(tmp_path / "run", "plugins=[branchy]", "model=branchy", "trainer.max_epochs=1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["export", f"checkpoint={best}", "format=torch_export", "plugins=[branchy]"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("trainkit: error: model branchy cannot be exported with torch")
    assert not (tmp_path / "model.pt2").exists()


def test_export_stops_the_workers_that_read_its_test_inputs(tmp_path, monkeypatch):
    from trainkit import export

    best = trained(tmp_path / "run", "model=mlp", "trainer.max_epochs=1", "data.num_workers=2")
    kept = []  # as the CLI's reference cycles keep them: collection must not be what stops them
    real_build = export.build
    monkeypatch.setattr(
        export, "build", lambda *a, **k: kept.append(real_build(*a, **k)) or kept[-1]
    )
    monkeypatch.chdir(tmp_path)
    before = set(multiprocessing.active_children())
    export.export_checkpoint(best, "torch_export", tmp_path / "m.pt2", plugins=[])
    assert (tmp_path / "m.pt2").exists() and len(kept) == 2
    assert set(multiprocessing.active_children()) <= before
