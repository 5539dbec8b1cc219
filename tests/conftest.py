"""Shared fixtures: running the real `trainkit` command in a temporary directory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

# pytest-xdist runs two workers on these 2 cores, and each starts trainkit commands: one
# thread a process, so that no process's OpenMP threads spin while another's wait for a core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The root logger's handlers and level as they were before the test: a command run in
    this process (``main([...])``) installs handlers on streams that pytest closes after it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_trainkit(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run `python -m trainkit ARGS` in ``cwd``; returns the CompletedProcess (text)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainkit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(root: Path) -> list[Path]:
    """Run directories (those holding .hydra/) under ``root``/outputs."""
    return sorted(p.parent for p in (root / "outputs").rglob(".hydra"))


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """`trainkit train` with no override, as a user first runs it; returns its run dir."""
    cwd = tmp_path_factory.mktemp("default_run")
    # 15 s on an idle machine; minutes when the cores are shared (the timeout is for a hang).
    result = run_trainkit("train", cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = run_dirs(cwd)
    run_dir.joinpath("console.txt").write_text(result.stdout + result.stderr)
    return run_dir
