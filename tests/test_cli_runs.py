"""End-to-end `trainkit train` runs: runs started together, images that cannot be decoded."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import run_dirs, run_trainkit
from tests.fake_images import make_imagefolder
from tests.test_data_vision import make_bad_images

SMALL = ["trainer.max_epochs=1", "logger.progress_bar=false"]


def test_two_runs_started_at_once_get_two_directories(tmp_path):
    """The run directory's name has microseconds: runs started in the same second (a user's
    two terminals, a job array) never share one."""
    command = [sys.executable, "-m", "trainkit", "train", "data=synthetic", "model=mlp"]
    command += [*SMALL, "data.num_samples=100"]
    env = {**os.environ, "COLUMNS": "200"}
    runs = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    directories = run_dirs(tmp_path)
    assert len(directories) == 2, directories
    assert all((directory / "summary.json").is_file() for directory in directories)


def test_images_that_cannot_be_decoded_are_skipped_and_counted_once(tmp_path):
    make_imagefolder(tmp_path / "images", per_class=10)
    garbage, _ = make_bad_images(tmp_path / "images" / "val")  # the test split
    result = run_trainkit(
        "train",
        "data=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "model=mlp",
        "data.image_size=32",
        "data.resize=36",
        "data.num_workers=2",
        "data.val_fraction=0.2",
        *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = run_dirs(tmp_path)
    log = (run_dir / "train.log").read_text()
    assert log.count("could not be decoded") == 1
    assert (
        "data imagefolder: 2 images could not be decoded and were skipped "
        f"(data.on_bad_image=skip); first: {garbage}"
    ) in log
    assert (run_dir / "summary.json").is_file()
