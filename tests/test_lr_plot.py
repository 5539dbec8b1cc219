"""`trainkit lr-plot`: the lr curve without touching the optimizer, its plots, the verb."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from trainkit import paths
from trainkit.cli import main
from trainkit.plotting import format_lr, lr_figure, png_bytes, terminal_plot
from trainkit.registry import load_components
from trainkit.schedulers import lr_curve

load_components()

LR = 0.1


def node(name: str, **overrides) -> dict:
    """The option's YAML defaults with ``overrides``, as the config would give them."""
    yaml = OmegaConf.to_container(OmegaConf.load(paths.config_dir() / "scheduler" / f"{name}.yaml"))
    return {**yaml, **overrides}


def assert_close(got, expected):
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"step {step}: {a} != {b}"


def two_group_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(2))]},
            {"params": [torch.nn.Parameter(torch.zeros(3))], "lr": LR / 10},
        ],
        lr=LR,
    )


def test_cosine_with_warmup_matches_the_closed_form_and_leaves_the_optimizer_alone():
    steps_per_epoch, epochs, warmup_steps, factor = 4, 5, 8, 0.1
    total = steps_per_epoch * epochs - warmup_steps
    expected = [LR * (factor + (1 - factor) * t / warmup_steps) for t in range(warmup_steps)]
    expected += [LR * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    optimizer = two_group_optimizer()
    before = [dict(group) for group in optimizer.param_groups]

    config = node("cosine", warmup_epochs=2, warmup_start_factor=factor)
    assert_close(lr_curve(config, optimizer, steps_per_epoch, epochs), expected)

    assert [dict(group) for group in optimizer.param_groups] == before
    assert all("initial_lr" not in group for group in optimizer.param_groups)


@pytest.mark.parametrize("monitor_mode", ["min", "max"])
def test_plateau_is_flat_even_past_its_patience(monitor_mode):
    # A constant metric would count as no improvement and reduce after `patience` epochs.
    config = node("plateau", patience=1, threshold=0.5)
    got = lr_curve(config, two_group_optimizer(), 2, 8, "val/acc", monitor_mode)
    assert_close(got, [LR] * 16)


def test_terminal_plot_has_the_rows_asked_for_and_the_max_top_left():
    lrs = [LR * 0.5 ** (t // 10) for t in range(50)]
    text = terminal_plot(lrs, width=40, height=8)
    lines = text.splitlines()
    plot_rows = [line for line in lines if "┤" in line or "│" in line]
    assert len(plot_rows) == 8 and len(lines) == 8 + 2  # then the axis and the step count
    top, bottom = plot_rows[0], plot_rows[-1]
    assert top.split("┤")[0].strip() == "0.1" and top.split("┤")[1][0] == "•"
    assert bottom.split("┤")[0].strip() == format_lr(min(lrs)) and bottom.split("┤")[1][-1] == "•"
    assert "50 steps" in lines[-1]
    assert all(len(row.split("┤" if "┤" in row else "│")[1]) == 40 for row in plot_rows)


def test_terminal_plot_on_a_log_scale_spaces_each_decade_alike():
    """Step decays of 10x, 100x from 0.1 (and a warmup's 0) on 10 rows: 0.1 at the top,
    0.01 halfway, 0.001 and the 0 at the bottom (linearly, 0.01 sat one row above 0.001)."""
    lrs = [0.0] + [0.1] * 10 + [0.01] * 10 + [0.001] * 10
    rows = terminal_plot(lrs, width=31, height=11, log_scale=True).splitlines()
    cells = [row.split("┤" if "┤" in row else "│")[1] for row in rows[:11]]

    def rows_of(column):  # (one column a step: column 0 is the 0, 5 the 0.1, ...)
        return [r for r in range(11) if cells[r][column] == "•"]

    assert (rows_of(0), rows_of(5), rows_of(15), rows_of(25)) == ([10], [0], [5], [10])
    assert rows[10].split("┤")[0].strip() == format_lr(0.001)


def test_the_lr_figure_starts_at_zero_with_labelled_axes_and_round_ticks(tmp_path):
    """matplotlib draws it: y from 0 (not the curve's minimum), ticks on round steps."""
    lrs = [LR * 0.5 * (1 + math.cos(math.pi * t / 600)) for t in range(600)]
    figure = lr_figure(lrs, "a title")
    (axes,) = figure.axes
    assert axes.get_ylim()[0] == 0 and axes.get_yscale() == "linear"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("optimizer step", "learning rate")
    ticks = [t for t in axes.get_xticks() if 1 <= t <= 600]
    assert ticks and all(t % 100 == 0 for t in ticks), ticks  # not 0, 120, 240, 359, ...
    assert axes.get_title() == "a title"
    (tmp_path / "lr.png").write_bytes(png_bytes(figure))
    with Image.open(tmp_path / "lr.png") as image:
        assert image.format == "PNG" and image.size == (800, 400)
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 2


def test_the_lr_figure_may_use_a_log_scale():
    (axes,) = lr_figure([LR * 0.9**t for t in range(100)], "t", log_scale=True).axes
    assert axes.get_yscale() == "log"


def test_lr_plot_writes_the_png_and_prints_the_lrs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["lr-plot", "scheduler=step", "scheduler.step_size=10", f"output={tmp_path}/lr.png"])
    out = capsys.readouterr().out
    with Image.open(tmp_path / "lr.png") as image:
        assert image.size == (800, 400)
    # sgd at lr 0.1 for 30 epochs, x0.1 every 10: 0.1 -> 0.01 -> 0.001
    assert "first lr 0.1, peak 0.1, last 1.0e-03" in out
    assert f"{tmp_path}/lr.png" in out
    assert not (tmp_path / "outputs").exists()
    assert "optimizer=sgd scheduler=step: 30 epochs x " in out


def test_lr_plot_says_the_warmup_in_its_title(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["lr-plot", "scheduler=cosine", "scheduler.warmup_epochs=2.5"])
    assert "scheduler=cosine after 2.5 warmup epochs: 30 epochs x " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer.lrr=0.1"], "unknown key optimizer.lrr; did you mean 'lr'?"),
        (["output=lr.jpg"], "output=lr.jpg must end in .png"),
    ],
)
def test_lr_plot_mistakes_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["lr-plot", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# --- lr-plot plans the run that train runs ----------------------------------------------------

RUN = [
    "data=synthetic",
    "data.num_samples=400",
    "data.batch_size=32",
    "model=mlp",
    "model.hidden=[16]",
    "trainer.max_epochs=3",
    "logger.log_every_n_steps=1",  # the lr of every step
    "logger.progress_bar=false",
    "logger.tensorboard=false",
]
SCHEDULERS = sorted(p.stem for p in (paths.config_dir() / "scheduler").glob("*.yaml"))


def planned(overrides: list[str]) -> list[float]:
    """What `trainkit lr-plot OVERRIDES` draws: the assembly's plan."""
    from trainkit import config
    from trainkit.build import build

    cfg = config.resolve(config.compose(config.prepare([*RUN, *overrides])))
    return build(cfg, "plan").planned_lrs


def used(overrides: list[str], run_dir, monkeypatch) -> list[float]:
    """The lr the run's optimizer steps used, one per step, as the runner logs them."""
    from trainkit import config
    from trainkit.reporting import RunLogger
    from trainkit.runner import Runner

    seen: dict[int, float] = {}
    real = RunLogger.log_step

    def record(self, step, values):
        if "train/lr" in values:
            seen[step] = values["train/lr"]
        return real(self, step, values)

    monkeypatch.setattr(RunLogger, "log_step", record)
    cfg = config.resolve(config.compose(config.prepare([*RUN, *overrides])))
    Runner(cfg, run_dir).fit()
    assert sorted(seen) == list(range(1, len(seen) + 1))
    return [seen[step] for step in sorted(seen)]


CASES = [
    *([f"scheduler={name}"] for name in SCHEDULERS),
    ["trainer.accumulate=4", "trainer.max_epochs=2"],  # 9 batches: 3 steps an epoch
    ["trainer.lr_reference_batch=256"],  # lr x 32/256
    ["trainer.limit_train_batches=4", "scheduler=step", "scheduler.step_size=1"],
    ["scheduler=cosine", "scheduler.warmup_epochs=1", "trainer.accumulate=2"],
    ["scheduler=exponential", "scheduler.interval=epoch", "trainer.accumulate=3"],
]


@pytest.mark.parametrize("overrides", CASES, ids=[" ".join(c) for c in CASES])
def test_the_plan_is_the_lr_the_run_uses_at_every_step(overrides, tmp_path, monkeypatch):
    if overrides == ["scheduler=plateau"]:  # the plan assumes the metric improves: keep it so
        overrides = [*overrides, "scheduler.patience=100"]
    assert_close(planned(overrides), used(overrides, tmp_path / "run", monkeypatch))


def test_a_very_long_run_is_not_planned_step_by_step_but_lr_plot_plans_it(monkeypatch):
    from trainkit import build, config

    cfg = config.resolve(config.compose(config.prepare([*RUN, "trainer.max_epochs=1000"])))
    assert build.build(cfg, "train").planned_lrs is not None  # 9,000 steps: planned
    monkeypatch.setattr(build, "PLANNED_STEPS_LIMIT", 8_999)
    assert build.build(cfg, "train").planned_lrs is None  # nor logged, nor warned about
    assert len(build.build(cfg, "plan").planned_lrs) == 9_000


def test_a_run_without_a_plan_trains_and_logs_its_lr(tmp_path, monkeypatch):
    from trainkit import build, config
    from trainkit.runner import Runner

    monkeypatch.setattr(build, "PLANNED_STEPS_LIMIT", 0)
    cfg = config.resolve(config.compose(config.prepare([*RUN, "trainer.max_epochs=1"])))
    summary = Runner(cfg, tmp_path / "run").fit()
    assert math.isfinite(summary["train/loss"])


@pytest.mark.distributed
def test_the_linear_scaling_rule_reads_the_samples_of_an_optimizer_step():
    """Half the batch, accumulated twice: the same 64 samples a step, the same lr."""
    whole = planned(["trainer.lr_reference_batch=256", "data.batch_size=64"])
    halves = planned(
        ["trainer.lr_reference_batch=256", "data.batch_size=32", "trainer.accumulate=2"]
    )
    assert whole[0] == halves[0] == pytest.approx(0.1 * 64 / 256)


@pytest.mark.slow
def test_the_plan_is_the_lr_of_a_two_process_run(tmp_path):
    """Two processes halve each one's batches per epoch and double the global batch that the
    linear scaling rule reads: lr-plot plans for trainer.devices, as train runs it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import run_trainkit

    overrides = ["trainer.devices=2", "trainer.lr_reference_batch=256", "trainer.accumulate=2"]
    args = [o for o in RUN if o != "logger.tensorboard=false"]
    result = run_trainkit(
        "train", *args, *overrides, "hydra.run.dir=run", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    logged = [event.value for event in sorted(events.Scalars("train/lr"), key=lambda e: e.step)]
    plan = planned(overrides)
    assert len(logged) == len(plan) == 3 * 3  # 280 samples / 2 / 32 = 5 batches: 3 steps
    assert logged == pytest.approx(plan, rel=1e-6)  # TensorBoard keeps 32-bit floats


def test_lr_plot_of_scheduler_step_decays_within_the_default_run(tmp_path, monkeypatch, capsys):
    """The README's second example: its schedule acts within the default 30 epochs."""
    monkeypatch.chdir(tmp_path)
    main(["lr-plot", "scheduler=step", f"output={tmp_path}/lr.png"])
    out = capsys.readouterr().out
    assert "30 epochs x 20 optimizer steps" in out
    assert "first lr 0.1, peak 0.1, last 1.0e-03" in out and "warning" not in out
