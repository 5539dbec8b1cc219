"""`trainkit predict`: a trained model on new files, prepared as its run prepared its data.

The proof: the test split written out as files the way a user would have them (PNGs, a CSV
of named features, a CSV of texts) gives the predictions `trainkit eval` gives for the same
samples.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainkit import config
from trainkit.cli import main
from trainkit.errors import UserError
from trainkit.evaluation import evaluate_checkpoint
from trainkit.runner import Runner

QUIET = ["logger.progress_bar=false", "logger.tensorboard=false"]


def trained(run_dir: Path, *overrides: str) -> Path:
    """A run trained in this process; returns its best.pt."""
    cfg = config.resolve(config.compose(config.prepare([*QUIET, *overrides])))
    Runner(cfg, run_dir).fit()
    return run_dir / "checkpoints" / "best.pt"


def evaluated(checkpoint: Path, out: Path) -> dict[int, dict]:
    """eval's predictions.csv rows by sample index."""
    out.mkdir()
    evaluate_checkpoint(checkpoint, [], out, plugins=[])
    return {int(row["index"]): row for row in csv.DictReader(open(out / "predictions.csv"))}


def predict(tmp_path, monkeypatch, capsys, *args: str) -> tuple[list[dict], str]:
    monkeypatch.chdir(tmp_path)
    main(["predict", *args])
    out = capsys.readouterr()
    output = next(a.partition("=")[2] for a in args if a.startswith("output="))
    with open(tmp_path / output) as handle:
        rows = list(csv.DictReader(handle)) if output.endswith(".csv") else []
    return rows, out.err + out.out  # what was skipped (stderr), then what was written


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("digits") / "run", "trainer.max_epochs=3")


def test_predict_on_pngs_of_the_test_split_gives_evals_predictions(
    digits_run, tmp_path, monkeypatch, capsys
):
    from sklearn.datasets import load_digits

    rows = evaluated(digits_run, tmp_path / "eval")
    images = load_digits().images  # 0..16: as 8-bit grey, 255 * v / 16
    folder = tmp_path / "pngs" / "nested"
    folder.mkdir(parents=True)
    for index in rows:
        pixels = np.round(images[index] / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=pngs",
        "output=out.csv", "topk=3",
    )  # fmt: skip
    assert said.strip() == "wrote 270 predictions to out.csv"
    assert len(predicted) == len(rows) == 270
    for row in predicted:
        index = int(Path(row["input"]).stem)
        expected = rows[index]
        assert row["prediction"] == expected["prediction"], index
        # The same probability up to the 8-bit rounding of the pixels.
        assert float(row["probability"]) == pytest.approx(
            float(expected[f"prob_{expected['prediction']}"]), abs=0.02
        )
    assert set(predicted[0]) == {"input", "prediction", "probability", "top_2",
                                 "probability_2", "top_3", "probability_3"}  # fmt: skip


def test_any_image_mode_and_size_and_an_npy_array_are_read(
    digits_run, tmp_path, monkeypatch, capsys, caplog
):
    from sklearn.datasets import load_digits

    digit = np.round(load_digits().images[0] / 16 * 255).astype(np.uint8)  # a 0
    Image.fromarray(digit, mode="L").convert("RGB").resize((32, 32)).save(tmp_path / "big.jpg")
    np.save(tmp_path / "many.npy", np.stack([digit, digit]))
    predicted, _ = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=big.jpg",
        "input=many.npy", "output=out.csv", "tta=hflip",
    )  # fmt: skip
    assert [row["input"] for row in predicted] == ["big.jpg", "many.npy:0", "many.npy:1"]
    assert predicted[1]["prediction"] == predicted[2]["prediction"] == "0"
    # The run trained without flips (augmentation=none): averaging with mirrors is warned of.
    warning = "tta=hflip averages with mirror images, and the run trained without flips"
    assert warning in caplog.text  # (on stderr: predict's lines are warnings and its result)


def test_tta_on_a_run_that_trained_on_mirror_images_is_said_nothing_of(
    tmp_path, monkeypatch, capsys, caplog
):
    run = trained(tmp_path / "run", "model=mlp", "augmentation=basic", "trainer.max_epochs=1")
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), dtype=np.float32))
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={run}", "input=x.npy", "output=out.csv",
        "tta=hflip",
    )  # fmt: skip
    assert len(predicted) == 2 and "tta=hflip" not in caplog.text + said


def test_npy_pixels_are_0_to_255_or_floats_from_0_to_1_as_float_images_are(
    digits_run, tmp_path, monkeypatch, capsys
):
    """The same three digits as uint8 pixels, as floats 0..255 and as floats 0..1: the
    same predictions (floats 0..1 were taken for nearly black pixels, one class for all)."""
    from sklearn.datasets import load_digits

    unit = load_digits().images[:3] / 16  # a 0, a 1, a 2
    np.save(tmp_path / "uint8.npy", np.round(unit * 255).astype(np.uint8))
    np.save(tmp_path / "float255.npy", np.round(unit * 255).astype(np.float32))
    np.save(tmp_path / "float01.npy", np.round(unit * 255) / 255)
    predicted, _ = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=uint8.npy",
        "input=float255.npy", "input=float01.npy", "output=out.csv",
    )  # fmt: skip
    by_file = [[row["prediction"] for row in predicted[i : i + 3]] for i in (0, 3, 6)]
    assert by_file == [["0", "1", "2"]] * 3
    probabilities = [row["probability"] for row in predicted]
    assert probabilities[6:] == probabilities[:3]


def test_an_npy_image_is_one_sample_in_any_layout_and_a_stack_is_many(
    digits_run, tmp_path, monkeypatch, capsys
):
    from sklearn.datasets import load_digits

    digit = np.round(load_digits().images[0] / 16 * 255).astype(np.uint8)  # a 0
    np.save(tmp_path / "hw.npy", digit)
    np.save(tmp_path / "chw.npy", digit[None])
    np.save(tmp_path / "hwc.npy", digit[:, :, None])  # not 8 images of (8, 1)
    np.save(tmp_path / "nhwc.npy", np.stack([digit, digit])[..., None])
    np.save(tmp_path / "nchw.npy", np.stack([digit, digit])[:, None])
    np.save(tmp_path / "odd.npy", np.zeros((5, 5), dtype=np.uint8))
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=hw.npy",
        "input=chw.npy", "input=hwc.npy", "input=nhwc.npy", "input=nchw.npy", "input=odd.npy",
        "output=out.csv",
    )  # fmt: skip
    assert [row["input"] for row in predicted] == [
        "hw.npy:0", "chw.npy:0", "hwc.npy:0", "nhwc.npy:0", "nhwc.npy:1", "nchw.npy:0",
        "nchw.npy:1",
    ]  # fmt: skip
    assert {row["prediction"] for row in predicted} == {"0"}
    assert {row["probability"] for row in predicted} == {predicted[0]["probability"]}
    assert (
        "odd.npy: an array of shape (5, 5); this model's images are (1, 8, 8), (8, 8, 1) or "
        "(8, 8), or a stack of them along a first axis"
    ) in said


def test_an_npy_colour_image_is_read_channels_last_or_first(tmp_path):
    from trainkit.data.preprocess import image_record, list_inputs, prepare

    record = image_record(3, (4, 4), [0.5] * 3, [0.25] * 3)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 4, 4)).astype(np.uint8)

    def read(name: str, array: np.ndarray) -> tuple[list, list]:
        np.save(tmp_path / name, array)
        bad = []
        return prepare(list_inputs([tmp_path / name], record), record, bad=bad), bad

    (first,), _ = read("chw.npy", pixels)
    (last,), _ = read("hwc.npy", np.moveaxis(pixels, 0, -1))
    assert torch.equal(first.tensor, last.tensor)
    stack, _ = read("nhwc.npy", np.stack([np.moveaxis(pixels, 0, -1)] * 5))  # 5, not 3
    assert len(stack) == 5 and torch.equal(stack[4].tensor, first.tensor)
    nothing, bad = read("hw.npy", pixels[0])  # grey: which channel would it be?
    assert not nothing and "this model's images are (3, 4, 4) or (4, 4, 3)" in bad[0][1]


def test_image_arrays_with_a_non_finite_or_complex_pixel_are_bad_inputs(
    digits_run, tmp_path, monkeypatch, capsys, recwarn
):
    good = np.full((8, 8), 128, dtype=np.float32)
    nan, inf, high, low = good.copy(), good.copy(), good.copy(), good.copy()
    nan[0, 0], inf[3, 3], high[1, 1], low[2, 2] = np.nan, -np.inf, 300, -1
    np.save(tmp_path / "x.npy", np.stack([good, nan, inf, high, low]))
    np.save(tmp_path / "complex.npy", good.astype(np.complex64))
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=x.npy",
        "input=complex.npy", "output=out.csv",
    )  # fmt: skip
    assert [row["input"] for row in predicted] == ["x.npy:0"]
    assert "nan" not in predicted[0]["probability"]
    assert "x.npy:1: a pixel is not a finite number" in said
    assert "x.npy:2: a pixel is not a finite number" in said
    # (an image file's pixels cannot be: they were fed on unclipped)
    assert "x.npy:3: pixels from 128 to 300; an image's are 0..255 (or 0..1)" in said
    assert "x.npy:4: pixels from -1 to 128" in said
    assert "complex.npy: an array of complex64 values, not real numbers" in said
    assert not [w for w in recwarn if "complex" in str(w.message).lower()]


def test_16_and_32_bit_images_are_scaled_to_8_bits_not_clipped(digits_run, tmp_path):
    from trainkit.data.preprocess import list_inputs, prepare

    record = torch.load(digits_run, weights_only=True)["data"]["preprocessing"]
    wide = np.linspace(0, 65535, 64).reshape(8, 8).round().astype(np.uint16)  # a picture
    Image.fromarray(np.round(wide / 257).astype(np.uint8), mode="L").save(tmp_path / "8.png")
    Image.fromarray(wide).save(tmp_path / "16.png")
    Image.fromarray(wide.astype(np.int32)).save(tmp_path / "32.tif")  # mode I
    Image.fromarray((wide / 65535).astype(np.float32)).save(tmp_path / "float.tif")  # mode F
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    names = ["8.png", "16.png", "32.tif", "float.tif"]
    bad = []
    samples = prepare(list_inputs([tmp_path / n for n in names], record), record, bad=bad)
    assert not bad and len(samples) == 4
    one_level = 1 / 255 / min(record["std"])  # a pixel's 1/255, normalized
    for sample in samples[1:]:
        difference = (sample.tensor - samples[0].tensor).abs().max().item()
        assert difference <= one_level + 1e-6, sample.source


def test_bad_inputs_are_listed_once_and_skipped_or_stop_under_error(
    digits_run, tmp_path, monkeypatch, capsys
):
    Image.new("L", (8, 8), 128).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("hello")
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=good.png",
        "input=broken.png", "input=notes.txt", "output=out.jsonl",
    )  # fmt: skip
    lines = said.strip().splitlines()
    assert lines[0] == "skipped 2 inputs that could not be used:"
    assert lines[1].startswith("  broken.png: not an image this machine can decode")
    assert lines[2].startswith("  notes.txt: a .txt file is not an input of this model")
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["input"] for row in written] == ["good.png"]

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"checkpoint={digits_run}", "input=broken.png", "on_bad_input=error"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("trainkit: error: broken.png: not an image") and "fix or remove" in line
    assert not (tmp_path / "predictions.csv").exists()


def test_features_in_a_csv_by_name_give_evals_predictions(tmp_path, monkeypatch, capsys):
    from sklearn.datasets import load_breast_cancer

    best = trained(tmp_path / "run", "recipe=breast_cancer_mlp", "trainer.max_epochs=3")
    rows = evaluated(best, tmp_path / "eval")
    bunch = load_breast_cancer()
    names = list(bunch.feature_names)
    with open(tmp_path / "patients.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *reversed(names)])  # any order, extra columns ignored
        for index in rows:
            writer.writerow([index, *reversed(bunch.data[index].tolist())])
    predicted, _ = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={best}", "input=patients.csv",
        "output=out.csv", "topk=1",
    )  # fmt: skip
    assert len(predicted) == len(rows)
    for row, index in zip(predicted, rows, strict=True):
        assert row["input"].endswith(f"patients.csv:{list(rows).index(index)}")
        expected = bunch.target_names[int(rows[index]["prediction"])]
        assert row["prediction"] == expected


def test_regression_predicts_in_the_targets_units(tmp_path, monkeypatch, capsys):
    from sklearn.datasets import load_diabetes

    best = trained(tmp_path / "run", "data=diabetes", "trainer.max_epochs=3")
    rows = evaluated(best, tmp_path / "eval")
    bunch = load_diabetes()
    indices = sorted(rows)[:20]
    np.save(tmp_path / "x.npy", bunch.data[indices])
    predicted, _ = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={best}", "input=x.npy", "output=y.csv"
    )
    for row, index in zip(predicted, indices, strict=True):
        assert float(row["prediction"]) == pytest.approx(float(rows[index]["prediction"]), rel=1e-4)


def test_texts_use_the_runs_vocabulary(tmp_path, monkeypatch, capsys):
    from tests.fake_text import make_text_csv

    data = make_text_csv(tmp_path / "texts.csv", n=120)
    best = trained(
        tmp_path / "run", "recipe=text_transformer", f"data.path={data}", "trainer.max_epochs=4",
        "debug=limit",
    )  # fmt: skip
    texts = list(csv.DictReader(open(data)))[:10]
    with open(tmp_path / "new.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text"])
        writer.writeheader()
        writer.writerows({"text": row["text"]} for row in texts)
        writer.writerow({"text": ""})
    lines = ['{"text": "a"}', "", '{"text": "b"}', "not json"]  # its 4th line
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={best}", "input=new.csv", "input=bad.jsonl",
        "output=out.csv",
    )  # fmt: skip
    assert len(predicted) == 10 and "new.csv:10: the text is empty" in said
    assert "bad.jsonl: cannot be read as JSONL (line 4 is not JSON (Expecting value))" in said
    classes = {row["label"] for row in csv.DictReader(open(data))}
    assert {row["prediction"] for row in predicted} <= classes


def test_texts_are_read_in_the_encoding_the_run_read_its_own(tmp_path, monkeypatch, capsys):
    from tests.fake_text import make_text_csv

    utf8 = make_text_csv(tmp_path / "texts.csv", n=60)
    rows = list(csv.DictReader(open(utf8)))
    data = tmp_path / "latin1.csv"
    with open(data, "w", newline="", encoding="latin-1") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": row["text"] + " café", "label": row["label"]} for row in rows)
    best = trained(
        tmp_path / "run", "recipe=text_transformer", f"data.path={data}",
        "data.encoding=latin-1", "trainer.max_epochs=1", "debug=limit",
    )  # fmt: skip
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={best}", f"input={data}", "output=out.csv"
    )
    assert len(predicted) == 60, said


def test_metric_learning_writes_the_embeddings(tmp_path, monkeypatch, capsys):
    best = trained(
        tmp_path / "run", "data=synthetic", "data.num_samples=200", "task=metric_learning",
        "model=mlp", "trainer.max_epochs=1",
    )  # fmt: skip
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 1, 8, 8)))
    predicted, said = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={best}", "input=x.npy", "output=e.csv"
    )
    assert "and e_embeddings.npy" in said
    embeddings = np.load(tmp_path / "e_embeddings.npy")
    assert embeddings.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, rtol=1e-4)
    assert float(predicted[0]["e0"]) == pytest.approx(embeddings[0, 0], abs=1e-5)

    # A taken embeddings file is refused before the predictions are written.
    (tmp_path / "p_embeddings.npy").write_bytes(b"mine")
    with pytest.raises(SystemExit):
        main(["predict", f"checkpoint={best}", "input=x.npy", "output=p.csv"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "trainkit: error: output=p.csv: its embeddings file p_embeddings.npy exists, and "
        "trainkit does not overwrite files; name another output"
    )
    assert not (tmp_path / "p.csv").exists()
    assert (tmp_path / "p_embeddings.npy").read_bytes() == b"mine"


def test_a_checkpoint_without_its_datas_description_is_one_line(
    digits_run, tmp_path, monkeypatch, capsys
):
    state = torch.load(digits_run, weights_only=True)
    del state["data"]  # as runs saved before predict existed
    torch.save(state, tmp_path / "old.pt")
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["predict", "checkpoint=old.pt", "input=a.png"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "does not say how its data was prepared" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "old.pt"]


def _damage(description: dict, change: str) -> dict | list:
    record = description["preprocessing"]
    if change == "few class names":
        description["class_names"] = ["0", "1"]
    elif change == "data a list":
        return [description]
    elif change == "unknown kind":
        record["kind"] = "bogus"
    elif change == "no mean":
        del record["mean"]
    elif change == "size 0":
        record["size"] = [0, 0]
    elif change == "4 channels":
        record["channels"], record["mean"], record["std"] = 4, [0.0] * 4, [1.0] * 4
    return description


@pytest.mark.parametrize(
    "change, what",
    [
        ("few class names", "2 class_names for num_classes=10"),
        ("data a list", "a list, not a mapping"),
        ("unknown kind", "preprocessing kind 'bogus', not one of image, features, array, tokens"),
        ("no mean", "image preprocessing without mean"),
        ("size 0", "size=[0, 0], not two sizes above 0"),
        ("4 channels", "channels=4, not 1 or 3"),
    ],
)
def test_a_damaged_data_description_is_one_line_in_predict_and_export(
    change, what, digits_run, tmp_path, monkeypatch, capsys
):
    state = torch.load(digits_run, weights_only=True)
    state["data"] = _damage(state["data"], change)
    torch.save(state, tmp_path / "damaged.pt")
    np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    for command in (["predict", "input=x.npy"], ["export", "format=torch_export"]):
        with pytest.raises(SystemExit):
            main([*command, "checkpoint=damaged.pt"])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"trainkit: error: checkpoint damaged.pt: its data description is damaged ({what}); "
            "use a checkpoint trainkit wrote"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt", "x.npy"]


def test_a_model_trained_on_a_gpu_is_used_where_there_is_none(
    digits_run, tmp_path, monkeypatch, capsys
):
    """A run with trainer.device=cuda wrote its checkpoint; predict, eval and export use it
    on this machine's device (predict: device=auto, eval: trainer.device=auto unless given,
    export: the CPU), not the device the run trained on."""
    state = torch.load(digits_run, weights_only=True)
    state["config"]["trainer"]["device"] = "cuda:0"
    torch.save(state, tmp_path / "gpu.pt")
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))
    from_gpu, _ = predict(
        tmp_path, monkeypatch, capsys, "checkpoint=gpu.pt", "input=x.npy", "output=gpu.csv"
    )
    as_trained, _ = predict(
        tmp_path, monkeypatch, capsys, f"checkpoint={digits_run}", "input=x.npy", "output=cpu.csv"
    )
    assert from_gpu == as_trained

    assert evaluate_checkpoint(tmp_path / "gpu.pt", [], tmp_path, [])["test/acc"] > 0.5
    main(["export", "checkpoint=gpu.pt", "format=torch_export"])
    assert "wrote model.pt2" in capsys.readouterr().out
    program = torch.export.load(tmp_path / "model.pt2")
    assert all(p.device.type == "cpu" for p in program.state_dict.values())


@pytest.mark.gpu
def test_on_a_gpu_predict_and_export_agree_with_the_cpu(tmp_path, monkeypatch, capsys):
    run = trained(
        tmp_path / "run", "trainer.device=cuda", "trainer.precision=bf16",
        "trainer.channels_last=true", "trainer.max_epochs=2", "model=resnet_cifar",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((5, 1, 8, 8), dtype=np.float32))
    rows = {}
    for device in ("cuda", "cpu"):
        rows[device], _ = predict(
            tmp_path, monkeypatch, capsys, f"checkpoint={run}", "input=x.npy",
            f"output={device}.csv", f"device={device}",
        )  # fmt: skip
    for on_gpu, on_cpu in zip(rows["cuda"], rows["cpu"], strict=True):
        assert on_gpu["prediction"] == on_cpu["prediction"]
        assert float(on_gpu["probability"]) == pytest.approx(float(on_cpu["probability"]), abs=1e-3)
    main(["export", f"checkpoint={run}", "format=onnx"])
    assert "wrote model.onnx" in capsys.readouterr().out


def test_a_bf16_run_is_evaluated_in_bf16_as_its_test_ran(tmp_path):
    best = trained(tmp_path / "run", "trainer.max_epochs=2", "trainer.precision=bf16")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (tmp_path / "eval").mkdir()
    evaluated = evaluate_checkpoint(best, [], tmp_path / "eval", plugins=[])
    for key in ("test/loss", "test/acc", "test/f1"):  # (float32 gave another test/loss)
        assert evaluated[key] == pytest.approx(summary[key], abs=1e-6), key


def test_tta_hflip_is_refused_for_a_model_that_reads_a_sequence():
    from trainkit.prediction import _check_tta

    strings = {"preprocessing": {"kind": "image"}, "target_kind": "sequence"}
    with pytest.raises(UserError, match="a mirror image reverses it"):
        _check_tta("hflip", strings)
    _check_tta("none", strings)
    _check_tta("hflip", {"preprocessing": {"kind": "image"}, "target_kind": "class"})
