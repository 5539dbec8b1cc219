"""The configs and recipes reach an installed wheel, not only a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_conf_and_recipes_and_runs_from_them(tmp_path):
    pytest.importorskip("hatchling")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("trainkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "trainkit/conf/train.yaml" in names
    assert "trainkit/conf/optimizer/adam.yaml" in names
    assert "trainkit/recipes/digits_resnet.yaml" in names

    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    code = "import trainkit.paths as p; print(p.config_dir()); print(p.recipes_dir())"
    where = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert where.stdout.splitlines() == [
        str(unpacked / "trainkit" / "conf"),
        str(unpacked / "trainkit" / "recipes"),
    ]
    helped = subprocess.run(
        [sys.executable, "-m", "trainkit", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    recipe_line = next(line for line in helped.stdout.splitlines() if line.startswith("recipe:"))
    assert "digits_resnet" in recipe_line, helped.stderr
