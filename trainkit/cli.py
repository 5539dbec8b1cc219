"""The ``trainkit`` command: one short function per verb.

Nothing heavy is imported at module level, so ``trainkit --help`` and ``--version`` answer
without loading torch or Hydra.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import math
import os
import sys
import textwrap
from pathlib import Path

from trainkit import __version__
from trainkit.errors import UserError

USAGE = """\
usage: trainkit [--version] [--help] COMMAND [ARGS]

Config-driven training for PyTorch.

commands:
  train [OVERRIDES]             train a model; `trainkit train --help` lists the config
                                groups (data, model, loss, optimizer, scheduler, ...)
  eval checkpoint=PATH [KEY=VALUE ...] [output_dir=DIR] [plugins=[MODULE,...]]
                                evaluate a checkpoint on its run's test split
  predict checkpoint=PATH|model=FILE.onnx input=PATH [input=PATH ...] [output=FILE.csv|.jsonl]
        [topk=5] [batch_size=N] [tta=none|hflip] [on_bad_input=skip|error]
        [device=auto|cpu|cuda] [plugins=[MODULE,...]]
                                the model on new files (images, folders, CSV/TSV/JSONL,
                                .npy), prepared as its run prepared its data
  export checkpoint=PATH [format=onnx|torch_export] [output=FILE] [opset=N]
        [plugins=[MODULE,...]]
                                the model as a file for serving (ONNX unless told),
                                checked against PyTorch
  ls [GROUP ...] [plugins=[MODULE,...]]
                                every component of each config group (and your
                                plugins'), with its parameters, types, ranges and defaults
  lr-plot [OVERRIDES] [output=PATH.png] [scale=linear|log]
                                the lr at every step of the composed optimizer and
                                schedule, in the terminal and as a new PNG
                                (lr_schedule.png; never over an existing file)
  lr-find [OVERRIDES] [min_lr=1e-7] [max_lr=10] [steps=100] [output=PATH.png]
                                the lr range test: the loss as the lr grows each step,
                                and the lr to train with (lr_find.png; no run directory)
  compare RUN_OR_SWEEP_DIR ... [metrics=NAME,...] [output=PATH.png]
                                runs side by side: a table of their metrics and their
                                validation curves as a new PNG (compare.png)

examples:
  trainkit train
  trainkit train optimizer=adam scheduler=cosine
  trainkit train -m optimizer=adam,sgd
  trainkit train -m hparams_search=tpe trainer.max_epochs=10
  trainkit compare outputs/multirun/2026-01-01/12-00-00-000000 metrics=val/acc,test/acc
  trainkit lr-plot optimizer=adamw scheduler=inverse_sqrt scheduler.warmup=100
  trainkit lr-find optimizer=adam
  trainkit eval checkpoint=outputs/2026-01-01/12-00-00-000000/checkpoints/best.pt
  trainkit predict checkpoint=outputs/2026-01-01/12-00-00-000000 input=photos/ output=labels.csv
  trainkit export checkpoint=outputs/2026-01-01/12-00-00-000000 format=onnx
  trainkit ls optimizer scheduler
"""

# Hydra's command-line flags that take a value (`--cfg job`): not overrides.
_HYDRA_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--experimental-rerun",  # (refused: see _train)
    "--info",
    "-i",
}
_HYDRA_FLAGS = {
    *_HYDRA_FLAGS_WITH_VALUE,
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--resolve",
    "--run",
    "-r",
    "--multirun",
    "-m",
    "--shell-completion",
    "-sc",
}
# Hydra's flags that name another config than trainkit's (refused: see _train).
_HYDRA_CONFIG_FLAGS = {"--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp"}
# Hydra's modes, of which a command takes one (its short and long names).
_HYDRA_MODES = {
    **dict.fromkeys(("-r", "--run"), "--run"),
    **dict.fromkeys(("-m", "--multirun"), "-m"),
    **dict.fromkeys(("-c", "--cfg"), "--cfg"),
    **dict.fromkeys(("-i", "--info"), "--info"),
}
_HYDRA_FLAGS_NO_RUN = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if argv[0] == "--version":
        print(f"trainkit {__version__}")
        return
    commands = {
        "train": train,
        "eval": evaluate,
        "ls": list_components,
        "lr-plot": lr_plot,
        "lr-find": lr_find,
        "compare": compare_runs,
        "predict": predict,
        "export": export,
    }
    command, args = argv[0], argv[1:]
    if command in commands and command != "train" and {"-h", "--help"} & set(args):
        print(command_usage(command), end="")  # (train's lists the config: Hydra answers it)
        return
    try:
        if command not in commands:
            hint = difflib.get_close_matches(command, commands, n=1)
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            names = ", ".join(commands)
            raise UserError(f"unknown command '{command}'; {did_you_mean}commands: {names}")
        # Every command needs torch. Its C++ extensions (torchvision's too) load here, with
        # a signal only noted: an exception raised inside their import was swallowed (the
        # command ran on, exit 0) or aborted the process. Once loaded, it ends the command.
        with _signals_noted() as received:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        if received:
            import signal

            raise KeyboardInterrupt if received[0] == signal.SIGINT else Terminated(received[0])
        with _interrupted_by_signals():
            commands[command](args)
    except (KeyboardInterrupt, Terminated) as error:  # a second Ctrl-C, or before training
        _exit_interrupted(getattr(error, "signal_number", 2))
    except UserError as error:
        fail(error)
    except BrokenPipeError:  # `trainkit ls | head`: the reader has gone; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + 13)
    except Exception as error:
        if _SIGNALLED:
            _exit_interrupted(_SIGNALLED[0])
        from trainkit.errors import file_system_reason, is_out_of_memory, out_of_memory

        if is_out_of_memory(error):  # eval, predict, lr-find (train says which keys)
            size = "batch_size=N" if command == "predict" else "data.batch_size"
            fail(out_of_memory(error, f"use a smaller {size}"))
        if not isinstance(error, OSError):
            raise
        # A path the file system refuses (too long, say), wherever met.
        reason = file_system_reason(error)
        if reason is None:
            raise
        name = str(error.filename or "")
        name = name if len(name) < 200 else f"{name[:80]}...{name[-60:]} ({len(name)} characters)"
        fail(f"{name}: {reason}" if name else reason)


def command_usage(command: str) -> str:
    """``trainkit COMMAND --help``: the command's lines of USAGE and its examples."""
    lines = USAGE.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {command} "))
    end = start + 1
    while lines[end].startswith("   "):  # its continuation lines are indented further
        end += 1
    # A line's description starts at column 32, after two spaces at least.
    parts = [
        (line[:32], line[32:]) if line[30:32] == "  " else (line, "") for line in lines[start:end]
    ]
    synopsis = [left.strip() for left, _ in parts if left.strip()]
    what = " ".join(right.strip() for _, right in parts if right.strip())
    text = f"usage: trainkit {synopsis[0]}\n" + "".join(f"         {s}\n" for s in synopsis[1:])
    text += "\n" + textwrap.fill(f"{what[0].upper()}{what[1:]}.", 90) + "\n"
    if "[OVERRIDES]" in synopsis[0]:
        text += "\nOVERRIDES are train's; `trainkit train --help` lists the config groups.\n"
    examples = [line for line in lines if line.startswith(f"  trainkit {command} ")]
    if examples:
        text += "\nexamples:\n" + "\n".join(examples) + "\n"
    return text


def _exit_interrupted(number: int) -> None:
    _ignore_signals()  # one line, whatever else arrives meanwhile
    print(f"trainkit: interrupted ({_signal_name(number)})", file=sys.stderr)
    sys.exit(128 + number)


def _ignore_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def _signal_name(number: int) -> str:
    import signal

    return signal.Signals(number).name


def fail(error: UserError | str) -> None:
    """The one way a user's mistake ends: one line on stderr, exit status 2."""
    if _SIGNALLED:  # the signal's exception, caught and re-worded inside a library
        _exit_interrupted(_SIGNALLED[0])
    rank = os.environ.get("RANK", "0") if os.environ.get("TORCHELASTIC_RUN_ID") else "0"
    if rank != "0":
        distributed = sys.modules.get("torch.distributed")
        if distributed is None or not distributed.is_initialized():
            sys.exit(2)  # torchrun's processes each checked the same command: rank 0 says it
        error = f"[rank {rank}] {error}"
    print(f"trainkit: error: {error}", file=sys.stderr)
    sys.exit(2)


# --- train ---------------------------------------------------------------------------------


def train(args: list[str]) -> None:
    """Check the overrides, claim the run (or sweep) directory, then hand over to Hydra.

    Every check that needs no data runs before a directory exists; a resume is checked
    against its run before anything of that run is touched.
    """
    # Startup makes hundreds of thousands of objects that live as long as the run (torch,
    # Hydra, the data set), and Python's cyclic garbage collector would walk them all again
    # and again: about 0.6 s before the first step. It is off until training starts, when
    # runner.train freezes what exists (never walked again) and turns it back on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _train(args)
    except UserError as error:
        raise _in_recipe_file(error, args) from None
    finally:
        if collecting:  # (a run that failed before training; or train() called in-process)
            gc.enable()


def _in_recipe_file(error: UserError, args: list[str]) -> UserError:
    """``error`` said to be in the recipe file that made it (``config.in_recipe_file``)."""
    from trainkit import config

    try:
        return config.in_recipe_file(error, _split_hydra_args(args)[0])
    except UserError:  # (the arguments' own mistake: said as it is)
        return error


def _train(args: list[str]) -> None:
    from hydra.types import RunMode

    from hydra_plugins.trainkit_optuna_sweeper import check_search
    from trainkit import checkpoint, config, rundir, sweeps
    from trainkit.overrides import override, quote_value

    overrides, flags = _split_hydra_args(args)
    names = [flag.partition("=")[0] for flag in flags]  # (--cfg=job is --cfg job)
    if "--experimental-rerun" in names:  # Hydra's: it unpickles the file, which can run code
        raise UserError(
            "--experimental-rerun loads a pickled config, and a pickle can run code: trainkit "
            "does not read one; train a run's config again with the overrides in its "
            ".hydra/overrides.yaml, or continue it with resume=RUN_DIR"
        )
    if {"-sc", "--shell-completion"} & set(names):
        raise UserError(
            "--shell-completion is Hydra's, for a program of one word: its script for "
            "`trainkit train` would complete a program named train too, and not trainkit's "
            "words; trainkit has no shell completion (trainkit train --help lists the config)"
        )
    own_config = [n for n in names if n in _HYDRA_CONFIG_FLAGS]
    if own_config:  # (another config would pass around trainkit's checks of this one)
        raise UserError(
            f"{own_config[0]} chooses Hydra's config, and trainkit checks and runs its own; "
            "put your settings in a recipe file and give recipe=path/to/file.yaml"
        )
    modes = list(dict.fromkeys(_HYDRA_MODES[n] for n in names if n in _HYDRA_MODES))
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot be given together; give one of them")
    if _HYDRA_FLAGS_NO_RUN & set(flags):  # --help, --cfg job, ...: Hydra prints, nothing runs
        prepared = config.prepare(overrides)
        sweeps.check_overrides(prepared)
        config.compose_launch(prepared, sweep=_multirun(flags))  # a typo: one line
        sys.argv = ["trainkit train", *flags, *prepared]
        _run_hydra(_train_job)
        return
    typed = overrides
    overrides, resuming = _resume(overrides, flags)
    rewritten = config.prepare(overrides)
    sweeps.check_overrides(rewritten)  # a sweep plugin not installed: one line, not a traceback
    launch = config.compose_launch(rewritten, sweep=_multirun(flags))
    config.check_hydra(launch)
    config.check_hydra_code(launch, typed)
    config.check_plugins(launch, config.plugins_named(rewritten))
    placement = ("hydra.run.dir=", "hydra.sweep.dir=")
    passed_on = [o for o in rewritten if not o.startswith(placement)]
    # (hparams_search= sets hydra.mode: a sweep without -m)
    multirun = _multirun(flags) or launch.hydra.mode == RunMode.MULTIRUN
    if multirun and resuming is not None:
        raise UserError(
            "resume=PATH continues one run; it cannot be part of a sweep (-m, hparams_search=)"
        )
    if multirun:
        if _torchrun():
            raise UserError(
                "torchrun starts one run in several processes, not a sweep; "
                "for DDP inside each sweep job use -m with trainer.devices=N instead"
            )
        # Every job's config, once, before anything is made.
        config.check_sweep(rewritten, config.plugins_named(rewritten))
        continues = any(o.lstrip("+").startswith("hparams_search=") for o in rewritten)
        sweep_dir = config.output_dir(launch, "hydra.sweep.dir")
        check_search(launch, config.task_overrides(rewritten), sweep_dir)
        owned = rundir.claim_new(sweep_dir, "hydra.sweep.dir", continues)
        earlier = set(sweeps.job_dirs(owned.path))  # a continued study's: not this sweep's
        passed_on.append(override("hydra.sweep.dir", str(owned.path)))
        # Job directories are named by what varies (3_optimizer=adam), not what all share.
        fixed = config.fixed_keys(rewritten)
        passed_on.append(
            "hydra.job.config.override_dirname.exclude_keys=["
            + ",".join(quote_value(key) for key in fixed)
            + "]"
        )
    else:
        cfg = config.resolve(config.without_hydra(launch))
        if resuming is not None:
            _check_resume(cfg, resuming)
        if _join_torchrun(cfg):
            return  # a non-main torchrun process: it trained in the main process's run
        if resuming is None:
            owned = rundir.claim_new(config.output_dir(launch, "hydra.run.dir"), "hydra.run.dir")
        else:
            owned = rundir.claim_run(checkpoint.run_dir_of(resuming), "resume")
        passed_on.append(override("hydra.run.dir", str(owned.path)))
    sys.argv = ["trainkit train", *flags, *passed_on]
    _run_in_directory(owned)
    if multirun:
        sweeps.fail_if_jobs_failed(owned.path, earlier)


def _run_in_directory(owned) -> None:
    """Hydra's run in the claimed directory; on any failure before a checkpoint exists, what
    this invocation made is removed again. The lock is given up at the end, whatever happens.
    """
    from trainkit.errors import file_system_error

    # Hydra re-raises what fails instead of printing its own traceback: a full disk while it
    # saves the config is then one line, like every other mistake.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _run_hydra(_train_job)
    except BaseException as error:
        owned.discard_if_untrained()
        if isinstance(error, Exception) and not isinstance(error, UserError):
            error = (
                file_system_error(error, str(owned.path))
                or _hydra_error(error)
                or _launcher_error(error)
                or error
            )
        if isinstance(error, UserError):
            fail(error)
        raise error from None if isinstance(error, UserError) else error
    finally:
        owned.release()


def _hydra_error(error: Exception) -> UserError | None:
    """Hydra's own errors about overrides (a sweep's syntax, an unknown option in one of its
    jobs) as one line."""
    from hydra.errors import HydraException, MissingConfigException

    from trainkit import config

    if isinstance(error, MissingConfigException):
        return UserError(config.missing_option_message(error))
    if isinstance(error, HydraException):
        return UserError(config.one_line(str(error)))
    return None


def _launcher_error(error: Exception) -> UserError | None:
    """An error raised in a launcher's or sweeper's plugin before any job ran (submitit's
    launcher on a machine without SLURM, say) as one line: the user chose that plugin, and
    its settings; a job's own failure comes through trainkit's code and is not this."""
    import traceback

    files = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
    plugin = [i for i, name in enumerate(files) if f"{os.sep}hydra_plugins{os.sep}" in name]
    package = os.path.dirname(os.path.abspath(__file__))
    if not plugin or any(name.startswith(package) for name in files[plugin[0] :]):
        return None
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return UserError(
        f"the sweep's launcher or sweeper failed before its jobs ran: {type(error).__name__}: "
        f"{message}; check hydra/launcher (and hydra/sweeper) and their settings"
    )


# The signal that _interrupted_by_signals raised as an exception: what a library made of
# that exception (Hydra's composition wrapped it into an error with no message) is not the
# user's mistake, and the command ends as interrupted.
_SIGNALLED: list[int] = []


class Terminated(BaseException):
    """SIGTERM outside training (training itself stops gracefully on it, at a step's end)."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


@contextlib.contextmanager
def _signals_noted():
    """While the block runs, SIGTERM and SIGINT are noted in the list it yields, not raised."""
    import signal
    import threading

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)
    previous = {n: signal.signal(n, lambda number, frame: received.append(number)) for n in handled}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def _interrupted_by_signals():
    """While a command runs, SIGTERM ends it as Ctrl-C does: at once, with one line, and a
    run directory made for a run that has not trained yet is removed. Further signals are
    ignored while that happens (a second one would interrupt the clean-up). Training
    installs its own handlers, which stop at a step's end and save a checkpoint."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGINT only where Python's own handler is (not where it is ignored, under nohup).
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)

    def stop(signal_number, frame):
        _SIGNALLED.append(signal_number)
        for number in handled:
            signal.signal(number, signal.SIG_IGN)
        if signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signal_number)

    previous = {number: signal.signal(number, stop) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _resume(overrides: list[str], flags: list[str]) -> tuple[list[str], Path | None]:
    """``resume=PATH``: the run's own overrides (from its .hydra/overrides.yaml), then the
    new ones; returns them and the checkpoint to resume from (None without ``resume=``).

    Plugins are never taken from the run's files: only this command line names code to import.
    """
    from trainkit import checkpoint, config
    from trainkit.overrides import override

    given = config.override_value(overrides, "resume")
    if given is None:
        return overrides, None
    if _multirun(flags):
        raise UserError("resume=PATH continues one run; it cannot be part of a sweep (-m)")
    folder = Path(str(given)).expanduser()
    if (folder / "multirun.yaml").is_file():
        raise UserError(
            f"resume={given} is a sweep directory; resume one of its jobs "
            f"(resume={folder / 'JOB'}), or continue its search with -m and "
            f"hydra.sweep.dir={given}"
        )
    path = checkpoint.find(folder, "last.pt", "resume").absolute()
    run_dir = checkpoint.run_dir_of(path)
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserError(
            f"resume={path}: {saved} is missing; resume needs the run directory the "
            "checkpoint was written in"
        )
    saved_overrides = config.read_overrides(saved)
    saved_plugins = config.override_value(saved_overrides, "plugins")
    if saved_plugins and config.override_value(overrides, "plugins") is None:
        raise UserError(
            f"resume={run_dir}: the run was trained with plugins={_listed(saved_plugins)}, and "
            "trainkit imports only the modules named on its command line; add "
            f"plugins={_listed(saved_plugins)} if you trust them"
        )
    merged: dict[str, str] = {}
    for text in saved_overrides:
        key = text.partition("=")[0].lstrip("+~")
        # hparams_search: the sweep's, not the job's (a resumed trial is one run)
        if key not in ("resume", "plugins", "hparams_search") and not key.startswith("hydra."):
            merged[key] = text
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if key != "resume" and not key.startswith("hydra."):
            merged[key] = text
    merged["resume"] = override("resume", str(path))
    return list(merged.values()), path


def _listed(value) -> str:
    items = [value] if isinstance(value, str) else list(value)
    return "[" + ",".join(str(item) for item in items) + "]"


def _check_resume(cfg, path: Path) -> None:
    """Refuse, before anything is written, a resume that the run's checkpoint does not fit;
    a finished run is said to be finished, and left as it is."""
    from trainkit import checkpoint, config

    run_dir = checkpoint.run_dir_of(path)
    if (run_dir / "summary.json").is_file():
        print(
            f"trainkit: the run in {run_dir} has finished (its test metrics are in "
            "summary.json); nothing to resume. Start a new run to train more.",
            file=sys.stderr,
        )
        sys.exit(0)
    state = checkpoint.load(path)
    checkpoint.check_resumable(state["config"], config.to_container(cfg))


def _torchrun() -> bool:
    from trainkit import distributed

    return distributed.launched()


def _join_torchrun(cfg) -> bool:
    """Under torchrun, join the process group; a non-main process then trains with the
    config and run directory of the main one (only it runs Hydra, so there is one run
    directory). Returns whether this process has done its run already."""
    if not _torchrun():
        return False
    from trainkit import distributed, launch

    distributed.setup(distributed.resolve_device(cfg.trainer.device))
    if distributed.is_main_process():
        return False
    launch.follow_main_process()
    return True


def _split_hydra_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags, and the overrides. A flag or a bare word in the manner of other CLIs
    (``--lr 0.1``, ``optimizer adam``) is one line saying which override was meant."""
    overrides, flags, index = [], [], 0
    while index < len(args):
        arg = args[index]
        if index and _unclosed(args[index - 1]) and "=" not in arg.partition(":")[0]:
            # regularization=[l1 grad_clip] unquoted: the shell cut it at the space
            pieces = [args[index - 1]]
            for piece in args[index:]:
                pieces.append(piece)
                if not _unclosed(" ".join(pieces)):
                    break
            raise UserError(
                f"{args[index - 1]!r} and {arg!r}: the shell split one override at its spaces; "
                f"quote it whole: {' '.join(pieces)!r}"
            )
        if arg.startswith("-") and arg.partition("=")[0] not in _HYDRA_FLAGS:
            _habit(args[index : index + 2], "options are KEY=VALUE overrides, not flags")
        if not arg.startswith("-") and "=" not in arg and not arg.startswith("~"):
            _habit(args[index : index + 2], "overrides are KEY=VALUE")
        if arg.startswith("-"):
            flags.append(arg)
            takes_value = arg in _HYDRA_FLAGS_WITH_VALUE and arg not in ("--info", "-i")
            if takes_value and index + 1 < len(args):
                flags.append(args[index + 1])
                index += 1
        else:
            overrides.append(arg)
        index += 1
    return overrides, flags


def _unclosed(arg: str) -> bool:
    """Whether an override opens more brackets or braces than it closes."""
    return "=" in arg and (arg.count("[") > arg.count("]") or arg.count("{") > arg.count("}"))


def _habit(words: list[str], rule: str) -> None:
    from trainkit import config

    looks_like_value = len(words) > 1 and "=" not in words[1] and not words[1].startswith("-")
    meant = config.suggest_override(words if looks_like_value else words[:1])
    hint = f"did you mean {meant}?" if meant else "see trainkit train --help"
    raise UserError(f"{words[0]!r}: trainkit train's {rule}; {hint}")


def _multirun(flags: list[str]) -> bool:
    return "-m" in flags or "--multirun" in flags


def _run_hydra(task) -> None:
    import hydra

    from trainkit.paths import config_dir

    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(task)()


def _train_job(cfg) -> float | None:
    """Hydra's task: one training run in Hydra's run directory; returns the best monitored
    value, or None when a sweep's job failed or diverged (the sweep records it and goes on)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainkit import rundir, sweeps
    from trainkit.reporting import quiet_console

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweep_job = ""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_job = f"[job {HydraConfig.get().job.num}] "
        quiet_console(sweep_job)  # one line a job; each job's train.log has all of it
        # The sweep's lock covers its directory; each job locks its own too, so that a
        # `resume=` of a job still training is refused, not run alongside it.
        try:
            owned = rundir.claim_run(run_dir, "resume")
        except UserError as error:
            sweeps.record_failure(run_dir, error)
            return None
        try:
            return _train_job_in(cfg, run_dir, sweep_job)
        finally:
            owned.release()
    return _train_job_in(cfg, run_dir, sweep_job)


def _train_job_in(cfg, run_dir: Path, sweep_job: str) -> float | None:
    """``_train_job`` in its directory (a sweep job's locked): ``sweep_job`` is the prefix of
    a sweep job's lines, "" for a single run."""
    from trainkit import config, launch, sweeps
    from trainkit.errors import file_system_error
    from trainkit.reporting import job_line, log_summary, print_summary

    try:
        if not cfg.get("resume"):  # (a resumed run's .hydra/ stays as it was)
            _save_run_config(cfg, run_dir)  # the overrides first: a failed job lists them
        effective = config.resolve(cfg)
        if not cfg.get("resume"):
            _save_run_config(effective, run_dir)
        summary = launch.train_in_processes(effective, run_dir, sweep_job)
    except Exception as error:
        _stop_if_interrupted(error, run_dir)
        if not isinstance(error, UserError):
            error = file_system_error(error, str(run_dir)) or error
        if sweep_job:
            sweeps.record_failure(run_dir, error)  # failed.json: the sweep summary lists it
            return None
        if not isinstance(error, UserError):
            raise
        fail(error)  # the CLI removes the run directory if nothing was trained in it
    if sweep_job:
        log_summary(summary)
        print(sweep_job + job_line(summary, run_dir), flush=True)
    else:
        log_summary(summary, console_too=False)  # train.log has them too
        print_summary(summary, run_dir)
    return sweeps.objective(summary)


def _save_run_config(cfg, run_dir: Path) -> None:
    """``.hydra/``, as Hydra would write it, but ``config.yaml`` holds the config the run
    trains with (the effective one: the checkpoints and TensorBoard's hparams hold the same)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from trainkit import config
    from trainkit.checkpoint import write_text_atomically
    from trainkit.overrides import override

    hydra = HydraConfig.get()
    folder = run_dir / ".hydra"
    typed = [
        override("recipe", str(config.RECIPE_FILES[text[7:]]))
        if text.startswith("recipe=") and text[7:] in config.RECIPE_FILES
        else text
        for text in hydra.overrides.task
    ]  # (a recipe file by its path: resuming the run finds it again)
    for name, node in (
        ("overrides.yaml", OmegaConf.create(typed)),
        ("hydra.yaml", OmegaConf.create({"hydra": hydra})),
        ("config.yaml", cfg),
    ):
        write_text_atomically(OmegaConf.to_yaml(node), folder / name)


def _stop_if_interrupted(error: Exception, run_dir: Path) -> None:
    """SIGINT/SIGTERM stopped the run after a step: say how to resume; exit 128 + signal."""
    from trainkit.overrides import resume_command
    from trainkit.runner import Interrupted

    if isinstance(error, Interrupted):
        if error.checkpoint_path is None:  # before the first checkpoint: nothing to resume
            print(f"trainkit: interrupted ({error})", file=sys.stderr)
        else:
            print(
                f"trainkit: {error} at a step's end; checkpoint saved: {error.checkpoint_path}\n"
                f"resume with: {resume_command(run_dir)}",
                file=sys.stderr,
            )
        sys.exit(128 + error.signal_number)


# --- eval ----------------------------------------------------------------------------------


def evaluate(args: list[str]) -> None:
    """``trainkit eval checkpoint=PATH [KEY=VALUE ...] [output_dir=DIR] [plugins=[MODULE]]``."""
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UserError(f"eval takes KEY=VALUE arguments; got {arg!r}")
        _set_once(options, key, value, "eval")
    if "checkpoint" not in options:
        near = [k for k in options if difflib.get_close_matches(k, ["checkpoint"], n=1)]
        did_you_mean = f"; {near[0]}= is no option: did you mean checkpoint=?" if near else ""
        raise UserError(f"eval needs checkpoint=PATH (a .pt file or a run directory){did_you_mean}")
    from trainkit import checkpoint, rundir
    from trainkit.registry import load_components

    checkpoint_path = checkpoint.find(_path_option(options.pop("checkpoint"), "checkpoint"))
    plugins = _plugins_option(options.pop("plugins", None))
    given = options.pop("output_dir", None)
    load_components(plugins)

    from trainkit.evaluation import check_checkpoint, evaluate_checkpoint

    # Before the output folder exists: a refused checkpoint leaves its folder as it was.
    checked = check_checkpoint(checkpoint_path, [f"{k}={v}" for k, v in options.items()], plugins)
    run = None
    if given is None:  # beside the checkpoint, never over an earlier evaluation's files
        output_dir = _unused_name(checkpoint_path.parent / f"eval_{checkpoint_path.stem}")
        key = "output_dir (eval writes beside the checkpoint by default)"
        run_dir = checkpoint.run_dir_of(checkpoint_path)
        if (run_dir / ".hydra").is_dir():  # in a run: not while another process writes it
            fix = "evaluate it when that ends, or now with output_dir=A_NEW_FOLDER"
            named = f"checkpoint={checkpoint_path}: its run {run_dir}"
            run = rundir.lock_run(run_dir, key, fix, named)  # (key: where a write fails)
    else:
        output_dir, key = Path(given).expanduser(), "output_dir"
    try:
        owned = rundir.claim_new(output_dir, key)
    except BaseException:
        if run is not None:
            run.release()
        raise

    from trainkit.reporting import print_summary, setup_console_logging

    setup_console_logging()
    try:
        summary = evaluate_checkpoint(checked, [], owned.path, plugins)
    except BaseException:
        owned.discard_if_untrained()
        raise
    finally:
        owned.release()
        if run is not None:
            run.release()
    print_summary(summary, owned.path, eval_only=True)


# --- predict -------------------------------------------------------------------------------

_PREDICT_USAGE = (
    "predict checkpoint=PATH (or model=FILE.onnx) input=PATH [input=PATH ...] "
    "[output=FILE.csv|.jsonl] [topk=5] [batch_size=256] [tta=none|hflip] "
    "[on_bad_input=skip|error] [device=auto|cpu|cuda] [plugins=[MODULE]]"
)


def predict(args: list[str]) -> None:
    """``trainkit predict checkpoint=PATH input=PATH ...``: the model on new files."""
    options: dict[str, str] = {}
    inputs: list[Path] = []
    known = (
        "checkpoint", "model", "output", "topk", "batch_size", "tta", "on_bad_input", "device",
        "plugins",
    )  # fmt: skip
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "input" and sep:
            if not value:  # Path("") is the current directory: every file under it
                raise UserError("input= names no file or folder; give input=PATH")
            inputs.append(Path(value).expanduser())
        elif sep and key in known:
            _set_once(options, key, value, "predict")
        else:
            hint = difflib.get_close_matches(key, [*known, "input"], n=1)
            did_you_mean = f"did you mean {hint[0]}=...? " if hint and sep else ""
            raise UserError(f"predict: {arg!r} is not an option; {did_you_mean}{_PREDICT_USAGE}")
    if "checkpoint" in options and "model" in options:
        raise UserError(
            "predict takes checkpoint=PATH or model=FILE.onnx, not both: they name two models"
        )
    if ("checkpoint" in options) == ("model" in options) or not inputs:
        raise UserError(
            f"predict needs checkpoint=PATH (or model=FILE.onnx) and input=PATH; {_PREDICT_USAGE}"
        )
    if "model" in options and not options["model"].lower().endswith(".onnx"):
        raise UserError(f"model={options['model']}: predict runs .onnx files that export wrote")
    topk = _positive_int(options, "topk", 5)
    batch_size = _positive_int(options, "batch_size", 256)
    tta, on_bad = options.get("tta", "none"), options.get("on_bad_input", "skip")
    if tta not in ("none", "hflip"):
        raise UserError(f"tta={tta}: use tta=none or tta=hflip")
    if on_bad not in ("skip", "error"):
        raise UserError(f"on_bad_input={on_bad}: use on_bad_input=skip or on_bad_input=error")
    device = options.get("device", "auto")
    if "model" in options and device != "auto":
        raise UserError(f"device={device}: an .onnx model runs on the CPU; leave device out")
    from trainkit.distributed import resolve_device

    resolve_device(device, "device")  # here, before anything is read or written
    suffixes = (".csv", ".jsonl")
    output = _new_output(options.get("output"), suffixes, " must end in .csv or .jsonl")

    from trainkit import checkpoint
    from trainkit.registry import load_components

    if "model" in options:
        source = _path_option(options["model"], "model")
    else:
        source = checkpoint.find(_path_option(options["checkpoint"], "checkpoint"))
    plugins = _plugins_option(options.get("plugins"))
    load_components(plugins)

    from trainkit.prediction import predict as predict_inputs
    from trainkit.prediction import report_skipped

    done = predict_inputs(source, inputs, output, plugins, topk, batch_size, tta, on_bad, device)
    report_skipped(done["skipped"])
    extra = f" and {done['embeddings']}" if done["embeddings"] else ""
    print(f"wrote {done['rows']} predictions to {done['output']}{extra}")


# --- export --------------------------------------------------------------------------------


def export(args: list[str]) -> None:
    """``trainkit export checkpoint=PATH format=onnx|torch_export [output=FILE] [opset=N]``."""
    options: dict[str, str] = {}
    known = ("checkpoint", "format", "output", "opset", "plugins")
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in known:
            raise UserError(
                f"export: {arg!r} is not an option; export checkpoint=PATH "
                "format=onnx|torch_export [output=FILE] [opset=N] [plugins=[MODULE]]"
            )
        _set_once(options, key, value, "export")
    if "checkpoint" not in options:
        raise UserError("export needs checkpoint=PATH (a .pt file or a run directory)")
    fmt = options.get("format", "onnx")
    suffix = {"onnx": ".onnx", "torch_export": ".pt2"}.get(fmt)
    if suffix is None:
        raise UserError(f"format={fmt}: use format=onnx or format=torch_export")
    if "opset" in options and fmt != "onnx":
        raise UserError(
            f"opset={options['opset']} is ONNX's; format={fmt} takes none: leave it out"
        )
    opset = _positive_int(options, "opset", 18) if "opset" in options else None
    wrong = f": format={fmt} writes a {suffix} file"
    output = _new_output(options.get("output"), (suffix,), wrong)

    from trainkit import checkpoint
    from trainkit.registry import load_components

    checkpoint_path = checkpoint.find(_path_option(options["checkpoint"], "checkpoint"))
    plugins = _plugins_option(options.get("plugins"))
    load_components(plugins)

    from trainkit.export import export_checkpoint

    done = export_checkpoint(checkpoint_path, fmt, output, plugins, opset)
    print(
        f"wrote {done['output']}: the largest difference from the PyTorch model on "
        f"{done['inputs']} is {done['difference']:.2e} (at most {done['tolerance']:.2e} allowed)"
    )


def _new_output(value: str | None, suffixes: tuple[str, ...], wrong: str) -> Path | None:
    """``output=value`` as a path for a new file, or None when not given. UserError when its
    suffix is none of ``suffixes`` (``wrong`` follows ``output=PATH`` in the message) or
    when it exists: trainkit writes no file over another."""
    if value is None:
        return None
    output = Path(value).expanduser()
    if output.suffix.lower() not in suffixes:
        raise UserError(f"output={output}{wrong}")
    if os.path.lexists(output):  # (a link, even to nothing, is not written through)
        raise UserError(
            f"output={output} exists, and trainkit does not overwrite files; name a new file"
        )
    return output


def _path_option(value: str, key: str) -> Path:
    """``key=value`` as a path; UserError for an empty value (``Path("")`` is the current
    directory, which the user did not name)."""
    if not value.strip():
        raise UserError(f"{key}= names no file; give {key}=PATH")
    return Path(value).expanduser()


def _set_once(options: dict[str, str], key: str, value: str, verb: str) -> None:
    """``options[key] = value``, refused when the key was given another value already: the
    last one winning would silently drop a checkpoint, an output or a setting the user
    typed."""
    earlier = options.get(key)
    if earlier is not None and earlier != value:
        raise UserError(f"{verb}: {key}= is given twice ({earlier} and {value}); give it once")
    options[key] = value


def _positive_int(options: dict[str, str], key: str, default: int) -> int:
    value = options.get(key, str(default))
    if not (value.isascii() and value.isdigit()) or int(value) < 1:  # (not ², which int refuses)
        raise UserError(f"{key}={value} must be a whole number >= 1")
    return int(value)


def _plugins_option(value: str | None) -> list[str]:
    """``plugins=[a,b]`` (or ``plugins=a``) as given on the command line."""
    if value is None or value == "":  # (plugins= : none)
        return []
    from trainkit import config

    parsed = config.override_value([f"plugins={value}"], "plugins")
    return [parsed] if isinstance(parsed, str) else [str(module) for module in parsed or []]


def _unused_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first name that is free."""
    candidate, number = path, 1
    while os.path.lexists(candidate):  # (a dangling link is taken too)
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


# --- ls ------------------------------------------------------------------------------------


def list_components(args: list[str]) -> None:
    """``trainkit ls [GROUP ...]``: a table per config group of its registered components."""
    from rich.table import Table

    from trainkit.paths import option_defaults
    from trainkit.registry import (
        GROUP_REGISTRIES,
        MULTI_GROUPS,
        describe_parameters,
        load_components,
    )
    from trainkit.settings import LoaderSettings, ScheduleSettings

    plugins = [a for a in args if a.startswith("plugins=")]  # your components listed too
    args = [a for a in args if a not in plugins]
    load_components([m for option in plugins for m in _plugins_option(option.partition("=")[2])])
    groups = {**GROUP_REGISTRIES, **MULTI_GROUPS}
    shared = {"scheduler": ScheduleSettings, "data": LoaderSettings}
    for group in args:
        if group in ("trainer", "logger", "finetune", "debug"):  # settings, not components
            raise UserError(
                f"{group} is not a group of components: trainkit train --help lists its keys "
                "with their defaults and what they do"
            )
        if group not in groups:
            hint = difflib.get_close_matches(group, groups, n=1)
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            raise UserError(f"unknown group '{group}'; {did_you_mean}groups: {', '.join(groups)}")
    from trainkit.reporting import console as reporting_console

    console = reporting_console()
    for group in args or groups:
        registry = groups[group]
        table = Table(title=f"{group}  ({group}=NAME)", title_justify="left", show_lines=True)
        table.add_column("name", style="bold")
        table.add_column("parameters (type, range = default)")
        table.add_column("what it is")
        for name in registry.names():
            builder = registry.get(name)
            defaults = option_defaults(group, name)
            if group in MULTI_GROUPS:  # regularization/x.yaml holds {x: {name: x, ...}}
                defaults = defaults.get(name) or {}
            parameters = "\n".join(
                f"{key}: {text}"
                for key, text in describe_parameters(builder, registry.runtime, defaults)
            )
            table.add_row(name, parameters or "-", _plain_text(builder.__doc__ or ""))
        if group in shared:  # keys every option of the group takes besides its own
            table.caption = f"every {group} also takes " + "; ".join(
                f"{key}: {text}" for key, text in describe_parameters(shared[group])
            )
            table.caption_justify = "left"
        console.print(table)


def _plain_text(docstring: str) -> str:
    """A docstring's first paragraph on one line, without reST markup (``code``, :ref:`x`)."""
    import re

    summary = docstring.strip().split("\n\n")[0]
    summary = re.sub(r":[a-z]+:`([^`]*)`", r"\1", summary)
    summary = re.sub(r"``([^`]*)``", r"\1", summary)
    return " ".join(summary.split())


# --- lr-plot -------------------------------------------------------------------------------


def lr_plot(args: list[str]) -> None:
    """``trainkit lr-plot [OVERRIDES] [output=PATH.png] [scale=linear|log]``: the run's lr
    curve, step by step.

    Plans the run through the assembly, as ``train`` would build it (steps per epoch with
    ``trainer.accumulate`` and ``trainer.devices``, the scaled lr), on the CPU; trains nothing
    and makes no run directory. The monitored metric is taken to improve every epoch, so
    ``scheduler=plateau`` shows a flat curve.
    """
    from trainkit import rundir

    if {"-m", "--multirun"} & set(args):
        raise UserError("lr-plot plans one run; -m sweeps belong to trainkit train -m")
    own = [arg for arg in args if arg.startswith(("output=", "scale="))]
    overrides = [arg for arg in args if arg not in own]
    options: dict[str, str] = {}
    for arg in own:
        _set_once(options, *arg.partition("=")[::2], "lr-plot")
    if options.get("scale", "linear") not in ("linear", "log"):
        raise UserError(f"scale={options['scale']}: use scale=linear or scale=log")
    log_scale = options.get("scale") == "log"
    output = _new_output(options.get("output"), (".png",), " must end in .png")

    from trainkit import config
    from trainkit.build import build
    from trainkit.plotting import format_lr, lr_figure, png_bytes, terminal_plot
    from trainkit.schedulers import idle_warning

    cfg = config.from_overrides(overrides)
    if cfg.get("resume"):  # the plan is a new run's, from its overrides
        raise UserError("lr-plot plans a run from its overrides; leave out resume=")
    plan = build(cfg, "plan")
    lrs, settings = plan.planned_lrs, plan.settings
    warmup = plan.cfg.scheduler.get("warmup_epochs") or 0
    title = (
        f"optimizer={plan.cfg.optimizer.name} scheduler={plan.cfg.scheduler.name}"
        + (f" after {warmup:g} warmup epochs" if warmup else "")
        + f": {settings.max_epochs} epochs x {plan.steps_per_epoch} optimizer steps"
    )
    png = png_bytes(lr_figure(lrs, title, log_scale))
    output = rundir.write_new_file(output or "lr_schedule.png", png, "output", output is None)
    print(title)
    print(terminal_plot(lrs, log_scale=log_scale))
    print(f"first lr {format_lr(lrs[0])}, peak {format_lr(max(lrs))}, last {format_lr(lrs[-1])}")
    warning = idle_warning(plan.cfg.scheduler, lrs, settings.max_epochs)
    if warning:
        print(f"warning: {warning}")
    print(f"wrote {output}")


# --- lr-find -------------------------------------------------------------------------------


def lr_find(args: list[str]) -> None:
    """``trainkit lr-find [OVERRIDES] [min_lr=1e-7] [max_lr=10] [steps=100]
    [output=PATH.png]``: the lr range test on a fresh build of the run the overrides
    describe, in this process; prints the lr to train with as the override to paste, and
    draws the curve. Makes no run directory and saves no model."""
    from trainkit import rundir

    own = ("min_lr=", "max_lr=", "steps=", "output=")
    if {"-m", "--multirun"} & set(args):
        raise UserError("lr-find runs one range test; -m sweeps belong to trainkit train -m")
    overrides = [arg for arg in args if not arg.startswith(own)]
    options: dict[str, str] = {}
    for arg in args:
        if arg.startswith(own):
            _set_once(options, *arg.partition("=")[::2], "lr-find")
    if options.get("output") == "":
        raise UserError("output= needs a file name, like output=lr_find.png")
    min_lr, max_lr = (
        _positive_float(options, "min_lr", 1e-7),
        _positive_float(options, "max_lr", 10.0),
    )
    if min_lr >= max_lr:
        raise UserError(f"min_lr={min_lr:g} must be below max_lr={max_lr:g}")
    steps = _positive_int(options, "steps", 100)
    if steps < 5:
        raise UserError(f"steps={steps}: the range test needs at least 5 steps (100 is usual)")
    output = _new_output(options.get("output"), (".png",), " must end in .png")
    rundir.check_can_write(output or "lr_find.png", "output")  # before the test, not after

    from trainkit import config
    from trainkit.lr_find import find_lr
    from trainkit.plotting import format_lr, lr_find_figure, png_bytes, terminal_plot

    cfg = config.from_overrides(overrides)
    if cfg.get("resume"):
        raise UserError("lr-find starts from a fresh build of the run; leave out resume=")
    if cfg.trainer.devices > 1:
        print(f"note: lr-find runs in one process; trainer.devices={cfg.trainer.devices} unused")
    test, parts = find_lr(cfg, min_lr, max_lr, steps)
    title = (
        f"lr range test: optimizer={parts.cfg.optimizer.name} model={parts.cfg.model.name}, "
        f"{len(test.lrs)} steps of batch {parts.loaders['train'].batch_size}"
        + (f" x {parts.settings.accumulate}" if parts.settings.accumulate > 1 else "")
    )
    suggestion = test.suggestion
    figure = lr_find_figure(test.lrs, test.losses, test.smoothed, suggestion, title)
    output = rundir.write_new_file(
        output or "lr_find.png", png_bytes(figure), "output", output is None
    )
    print(title)
    print(terminal_plot(
        test.smoothed,
        x_ends=(f"lr {format_lr(test.lrs[0])}", f"{format_lr(test.lrs[-1])} (log scale)"),
        label=lambda loss: f"{loss:.3g}",
    ))  # fmt: skip
    print(f"smoothed loss: lowest {min(test.smoothed):.4g} at lr {format_lr(test.minimum)}")
    if test.stopped:
        print(f"stopped: {test.stopped}")
    elif test.minimum == test.lrs[-1]:
        print(f"note: the loss was still falling at max_lr={max_lr:g}; raise max_lr to see it turn")
    rule = (
        "where the smoothed loss falls fastest, before its lowest point"
        if test.steepest is not None
        else "the lr of the lowest smoothed loss / 10 (the loss hardly fell before it)"
    )
    print(f"suggested: optimizer.lr={_short_float(suggestion)}  ({rule}; the lowest / 10: "
          f"{_short_float(test.minimum / 10)})")  # fmt: skip
    print(f"wrote {output}")


def _positive_float(options: dict[str, str], key: str, default: float) -> float:
    value = options.get(key, str(default))
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise UserError(f"{key}={value} must be a number > 0, like {key}={default:g}")
    return number


def _short_float(value: float) -> str:
    """Two significant digits, to paste (``0.031``, ``3e-05``)."""
    return f"{float(f'{value:.2g}'):g}"


# --- compare -------------------------------------------------------------------------------


def compare_runs(args: list[str]) -> None:
    """``trainkit compare RUN_OR_SWEEP_DIR ... [metrics=NAME,...] [output=PATH.png]``."""
    options: dict[str, str] = {}
    paths = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in ("metrics", "output"):
            _set_once(options, key, value, "compare")
        elif sep and not Path(arg).expanduser().exists():
            raise UserError(
                f"compare takes directories, metrics=A,B and output=PATH.png; got {arg!r}"
            )
        else:
            paths.append(Path(arg).expanduser())
    if not paths:
        raise UserError("compare needs at least one run or sweep directory")

    output = _new_output(options.get("output") or None, (".png",), " must end in .png")

    from trainkit.compare import compare

    compare(paths, [m for m in options.get("metrics", "").split(",") if m], output)
