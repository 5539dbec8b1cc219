"""Checkpoints: atomic saves, data-only loads, clear errors for bad files."""

from __future__ import annotations

import io
import json
import math
import time

import pytest
import torch

from trainkit import checkpoint
from trainkit.errors import UserError


def make_state() -> dict:
    return {
        "model": {"weight": torch.randn(3, 4), "bias": torch.arange(3, dtype=torch.float64)},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.1}]},
        "config": {"optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.999]}},
        "epoch": 7,
        "best": 0.975,
        "nan": math.nan,
        "missing": None,
        "flag": True,
        "name": "run",
        "history": [1, 2.5, None, "x", [3, 4]],
        "nested": {"a": {"b": {"c": [torch.ones(2, dtype=torch.int64)]}}},
        "rng": torch.get_rng_state(),
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert type(a) is type(b) and a == b


def test_round_trip(tmp_path):
    state = make_state()
    path = tmp_path / "sub" / "dir" / "last.pt"  # parents are created
    checkpoint.save(state, path)
    assert path.is_file()
    loaded = checkpoint.load(path)
    assert_same(state, loaded)
    assert loaded["model"]["weight"].device.type == "cpu"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_load_uses_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save(make_state(), path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    checkpoint.load(path)
    assert seen.get("weights_only") is True


def test_save_overwrites(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save({"model": {}, "config": {}, "epoch": 1}, path)
    checkpoint.save({"model": {}, "config": {}, "epoch": 2}, path)
    assert checkpoint.load(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


class Crash(RuntimeError):
    pass


def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    checkpoint.save({"model": {"w": torch.ones(2)}, "config": {}, "epoch": 1}, path)
    before = path.read_bytes()
    calls = []

    def failing_save(obj, handle, *args, **kwargs):
        calls.append(obj)
        handle.write(b"PK\x03\x04 half a zip file")
        raise Crash("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(Crash, match="disk full"):
        checkpoint.save({"model": {"w": torch.zeros(2)}, "config": {}, "epoch": 2}, path)
    assert len(calls) == 1  # the patched save was the one used
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"model": {}, "config": {}}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_a_user_error(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save(make_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt") as error:
        checkpoint.load(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10, bytes(range(256))])
def test_garbage_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"best.pt is not a PyTorch file \(a .pt file torch.save"):
        checkpoint.load(path)


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="is a folder without best.pt: not a run directory"):
        checkpoint.load(tmp_path)


def test_data_that_is_not_a_trainkit_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(1)}, path)
    with pytest.raises(UserError, match="not a trainkit checkpoint"):
        checkpoint.load(path)
    torch.save([1, 2], path)
    with pytest.raises(UserError, match="not a trainkit checkpoint"):
        checkpoint.load(path)


def test_find_in_a_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.pt"
    checkpoint.save(make_state(), best)
    checkpoint.save(make_state(), run / "checkpoints" / "last.pt")
    assert checkpoint.find(run) == best
    assert checkpoint.find(str(run)) == best
    assert checkpoint.find(best) == best
    assert checkpoint.load(run)["epoch"] == 7


def test_find_in_the_checkpoints_directory(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"x")
    assert checkpoint.find(tmp_path) == tmp_path / "best.pt"


def test_find_a_run_directory_without_best(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="is a folder without checkpoints/best.pt"):
        checkpoint.find(tmp_path)


def test_save_json(tmp_path):
    data = {"test/acc": 0.97, "epochs": 3, "names": ["a", "b"], "nested": {"x": None}}
    path = tmp_path / "out" / "summary.json"
    checkpoint.save_json(data, path)
    text = path.read_text()
    assert json.loads(text) == data
    assert text.endswith("\n") and "\n  " in text  # indented
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_save_json_that_cannot_be_serialized_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    checkpoint.save_json({"a": 1}, path)
    with pytest.raises(TypeError):
        checkpoint.save_json({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


class Payload:
    """Unpickling this would run code under a full (not weights-only) load."""

    def __init__(self):
        self.value = 42


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Payload()}, path)
    # A full load would accept it; the checkpoint loader must not.
    assert torch.load(path, weights_only=False)["payload"].value == 42
    with pytest.raises(UserError) as error:
        checkpoint.load(path)
    assert str(error.value) == (
        f"checkpoint {path} holds objects other than tensors and plain data; trainkit never "
        "runs code from a file, so it does not load it"
    )


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {}, "config": {}, "x": Exploit()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="holds objects other than tensors") as error:
        checkpoint.load(path)
    assert "weights_only" not in str(error.value)  # never torch's advice to load it unsafely


def test_saved_files_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        checkpoint.save({"model": {}}, tmp_path / "c.pt")
        checkpoint.save_json({"a": 1}, tmp_path / "s.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_says_so_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.pt"
    checkpoint.save(make_state(), path)
    before = path.read_bytes()

    def no_space(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(UserError) as error:
        checkpoint.save(make_state(), path)
    assert str(error.value) == (
        f"cannot write checkpoint {path} (no space left on the device; free some space); "
        "the previous checkpoint is intact"
    )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_keep_best_removes_only_the_files_the_run_wrote(tmp_path):
    """A file the user put beside the checkpoints is never pruned, even under a name the
    run uses: only the epochs the run kept before (``best_epochs``) are its own."""
    checkpoint.save(make_state(), tmp_path / "best_epoch_0001.pt")
    mine = ["best_epoch_0002.pt", "best_epoch_paper.pt", "epoch_0099.pt", "notes.txt"]
    for name in mine:
        (tmp_path / name).write_text("mine")
    resumed = checkpoint.Ownership(resumed_ns=time.time_ns())  # a resume after those files
    kept = checkpoint.keep_best(make_state(), tmp_path, [(0.5, 1)], (0.9, 3), 1, "max", resumed)
    assert kept == [(0.9, 3)]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([*mine, "best_epoch_0003.pt"])
    assert all((tmp_path / name).read_text() == "mine" for name in mine)


def test_a_listed_checkpoint_replaced_after_the_resume_point_is_left(tmp_path):
    """The run's checkpoint lists best_epoch_0001.pt, but a file of that name newer than
    the checkpoint it resumed from is someone's: neither removed nor saved over."""
    own = checkpoint.Ownership(resumed_ns=time.time_ns() - 10**9)
    (tmp_path / "best_epoch_0001.pt").write_text("mine, since")
    kept = checkpoint.keep_best(make_state(), tmp_path, [(0.5, 1)], (0.9, 3), 1, "max", own)
    assert kept == [(0.9, 3)]
    assert (tmp_path / "best_epoch_0001.pt").read_text() == "mine, since"
    assert not own.free(tmp_path / "best_epoch_0001.pt", listed=True)
    assert own.free(tmp_path / "best_epoch_0003.pt", listed=False)  # its own, written now


def test_a_runs_relative_data_paths_are_read_where_it_ran(tmp_path, monkeypatch):
    """eval, predict and export rebuild a run's data from its checkpoint: a relative
    data.root is the run's working directory's, not the one eval is started in (where a
    folder of the same name would silently be other data)."""
    from trainkit import config
    from trainkit.runner import Runner

    ran_in = tmp_path / "project"
    ran_in.mkdir()
    monkeypatch.chdir(ran_in)
    overrides = ["data=synthetic", "model=mlp", "model.hidden=[8]", "logger.progress_bar=false"]
    runner = Runner(config.compose(config.prepare(overrides)), tmp_path / "run")
    state = runner.state_dict()
    assert state["cwd"] == str(ran_in)

    monkeypatch.chdir(tmp_path)
    state["config"]["data"].update(root="imgs", path="/abs/texts.csv", val_path="v.csv")
    data = checkpoint.config_of(state, tmp_path / "x.pt", plugins=[]).data
    assert data.root == str(ran_in / "imgs") and data.val_path == str(ran_in / "v.csv")
    assert data.path == "/abs/texts.csv"  # absolute: as it is
    del state["cwd"]  # a checkpoint from before trainkit kept it: as it was
    assert checkpoint.config_of(state, tmp_path / "x.pt", plugins=[]).data.root == "imgs"
