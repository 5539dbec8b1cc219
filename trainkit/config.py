"""Composing, validating and describing the run config.

Hydra composes ``conf/train.yaml`` with the chosen group options, recipe and overrides.
``validate`` then checks every node against the builder or settings class that will
consume it, so that a mistake fails in one line before a run directory exists.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from trainkit import paths
from trainkit.errors import UserError
from trainkit.registry import (
    GROUP_REGISTRIES,
    MULTI_GROUPS,
    REGULARIZERS,
    Registry,
    check_params,
    closest_key,
    load_components,
    plugins_not_named,
)
from trainkit.settings import (
    FinetuneSettings,
    LoggerSettings,
    TrainerSettings,
    split_data_node,
    split_scheduler_node,
)

TOP_LEVEL_KEYS = {
    *GROUP_REGISTRIES,
    *MULTI_GROUPS,
    "trainer",
    "finetune",
    "logger",
    "plugins",
    "resume",
    "init_from",
}


# --- before composing: plugins, recipes ----------------------------------------------------


def plugins_named(overrides: list[str]) -> list[str]:
    """The modules ``plugins=`` names on the command line: the only code trainkit imports
    (besides installed entry points)."""
    value = override_value(overrides, "plugins")
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(module) for module in value]


def check_plugins(cfg: DictConfig, named: list[str]) -> None:
    """UserError if the composed config names plugins that the command line did not (a
    recipe's, or a resumed run's): a file never decides what code is imported."""
    listed = plugins_not_named(cfg.get("plugins"), named)
    if listed:
        raise UserError(
            f"the config names plugins={listed} (in a recipe or a run's files), and trainkit "
            f"imports only the modules named on its command line; add plugins={listed} if "
            "you trust them"
        )


# Recipes given as files (recipe=path/to/file.yaml), by the name they are registered under:
# a run's saved overrides name the file, so that resuming it finds the recipe again.
RECIPE_FILES: dict[str, Path] = {}


# The groups and sections whose settings a component takes (regularization's entries and
# plugins are lists of what to use, and may lose an entry).
_SETTINGS_GROUPS = {*GROUP_REGISTRIES, "trainer", "logger", "finetune"}


def prepare(overrides: list[str]) -> list[str]:
    """Load components and plugins, register recipes; return the overrides to compose with.

    ``recipe=path/to/file.yaml`` is accepted too: the file is registered under its stem
    and the override rewritten to ``recipe=<stem>``.
    """
    parsed = _parse_overrides(overrides)
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() and key.partition(".")[0] in _SETTINGS_GROUPS and "." in key:
            raise UserError(
                f"~{key} deletes a setting, and what it sets would then fall back to a default "
                f"that no run file records (torch's own for an optimizer); give it a value "
                f"instead: {key}=VALUE"
            )
    load_components(plugins_named(overrides))
    _register_plugin_options()
    for recipe in sorted(paths.recipes_dir().glob("*.yaml")):
        _register_recipe(recipe)
    rewritten = []
    for override, text in zip(parsed, overrides, strict=True):
        value = override.value() if override.key_or_group == "recipe" else None
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            recipe = Path(value).expanduser()
            if not recipe.is_file():
                raise UserError(f"recipe={value}: no such file")
            _register_recipe(recipe)
            RECIPE_FILES[recipe.stem] = recipe.absolute()
            text = f"recipe={recipe.stem}"
        rewritten.append(text)
    return rewritten


# The key a mistake's message starts with: "unknown key trainer.max_epochz; ...",
# "model.hidden[0]='a' has the wrong type", "unknown optimizer 'adamm'" (a group).
_KEY_IN_MESSAGE = re.compile(r"(?:unknown key )?([A-Za-z_]\w*(?:\.\w+)+)|unknown (\w+) '")


def in_recipe_file(error: UserError, overrides: list[str]) -> UserError:
    """``error`` said to be in the recipe file given as ``recipe=path/to/file.yaml`` when
    that file sets the key the error names and ``overrides`` do not: the key alone would send
    the user to the command line. Other errors come back as they are."""
    typed = override_value(overrides, "recipe")
    file = RECIPE_FILES.get(Path(typed).stem) if isinstance(typed, str) else None
    found = _KEY_IN_MESSAGE.match(str(error))
    if file is None or found is None or not file.is_file():
        return error
    key = found.group(1) or found.group(2)
    for override, text in zip(_parse_overrides(overrides), overrides, strict=True):
        given = override.key_or_group  # (model=mlp chooses a model: it sets no model.hidden)
        if given == key or (key.startswith(f"{given}.") and not _is_group(text)):
            return error
    node = OmegaConf.load(file)  # (the file composed: it is YAML)
    chosen = {
        str(entry).removeprefix("override").strip().lstrip("/")
        for item in node.get("defaults") or []
        if isinstance(item, Mapping)
        for entry in item
    }
    missing = object()
    if key in chosen or OmegaConf.select(node, key, default=missing) is not missing:
        return UserError(f"{os.path.relpath(file)}: {error}")
    return error


def _parse_overrides(overrides: list[str]):
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise UserError(_unparsable(error)) from None
    for override, text in zip(parsed, overrides, strict=True):
        if not override.key_or_group:
            raise UserError(f"override {text!r} has no key; write KEY=VALUE, e.g. optimizer.lr=0.1")
    return parsed


def _unparsable(error: OverrideParseException) -> str:
    """Hydra's complaint in one line, and, for a value it cannot read as it is, how to quote
    it (a path with spaces, brackets, commas or letters outside ASCII)."""
    message = f"cannot parse override {error.override!r}: {_first_line(error.message)}"
    key, sep, value = str(error.override).partition("=")
    if sep and key and value and not value.startswith(("'", '"', "[", "{")):
        from trainkit.overrides import command, override

        message += f"; to pass the value as it is, quote it: {command(override(key, value))}"
    return message


def _register_recipe(path: Path) -> None:
    try:
        node = OmegaConf.load(path)
    except Exception as error:  # yaml's errors carry the line and column
        raise UserError(f"recipe {path} is not valid YAML: {one_line(str(error))}") from None
    if not isinstance(node, DictConfig):
        raise UserError(f"recipe {path} must be a mapping of config keys")
    ConfigStore.instance().store(group="recipe", name=path.stem, node=node, package="_global_")


def _register_plugin_options() -> None:
    """Let ``model=my_model`` select a plugin's component that has no YAML file of its own.

    Its config node is the builder's signature defaults (required ones left as ``???``).
    """
    store = ConfigStore.instance()
    for group, registry in {**GROUP_REGISTRIES, **MULTI_GROUPS}.items():
        for name in registry.names():
            if (paths.config_dir() / group / f"{name}.yaml").exists():
                continue
            node = {"name": name, **_signature_defaults(registry, name)}
            store.store(
                group=group, name=name, node={name: node} if group in MULTI_GROUPS else node
            )


def _signature_defaults(registry: Registry, name: str) -> dict[str, Any]:
    defaults = {}
    for parameter in inspect.signature(registry.get(name)).parameters.values():
        if parameter.name in registry.runtime or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        value = parameter.default
        defaults[parameter.name] = (
            "???"
            if value is inspect.Parameter.empty
            else list(value)
            if isinstance(value, tuple)
            else value
        )
    return defaults


# --- composing -----------------------------------------------------------------------------


def compose(
    overrides: list[str], config_name: str = "train", with_hydra: bool = False
) -> DictConfig:
    """The composed config for ``overrides`` (call ``prepare`` first); UserError on mistakes.

    ``with_hydra``: keep the ``hydra`` node (where the run goes, the launch mode).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(paths.config_dir()), version_base="1.3"):
        try:
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=with_hydra)
        except MissingConfigException as error:
            raise UserError(missing_option_message(error)) from None
        except OverrideParseException as error:
            raise UserError(_unparsable(error)) from None
        except HydraException as error:
            key = _overridden_key(str(error))
            if key is not None:
                raise UserError(_unknown_key(key, overrides, config_name)) from None
            raise UserError(_value_hint(overrides) or one_line(str(error))) from None
        except (OmegaConfBaseException, ValueError) as error:
            raise UserError(_value_hint(overrides) or one_line(str(error))) from None


def compose_launch(overrides: list[str], sweep: bool) -> DictConfig:
    """The config with its ``hydra`` node, which says where the run or sweep goes.

    A sweep (``sweep``: -m) is composed without its swept values, and only its directory and
    mode are read from it; when the rest does not compose without them (``optimizer=adam,sgd
    optimizer.betas=[...]``), from the ``hydra.*`` overrides alone.
    """
    if not sweep:
        return compose(overrides, with_hydra=True)
    parsed = _parse_overrides(overrides)
    fixed = [text for o, text in zip(parsed, overrides, strict=True) if not o.is_sweep_override()]
    try:
        return compose(fixed, with_hydra=True)
    except UserError:
        own = [text for text in fixed if text.lstrip("+~").startswith(("hydra.", "hydra/"))]
        return compose(own, with_hydra=True)


def task_overrides(overrides: list[str]) -> list[str]:
    """The overrides of the run's keys and groups: ``overrides`` without Hydra's own."""
    return [
        override.input_line
        for override in _parse_overrides(overrides)
        if not override.key_or_group.startswith(("hydra.", "hydra/"))
    ]


def check_sweep(overrides: list[str], plugins: list[str]) -> None:
    """Every job of a grid sweep (``-m a=1,2 b=x,y``) composes and resolves: a mistake in
    any of them is one line before anything runs or any directory exists, not one failed
    job after another. A search (``hparams_search=...``) is checked at its fixed values, at
    each value of its choice(...) and range(...) keys and at both ends of its intervals
    (values between the ends are checked as each trial runs).

    Jobs that choose the same config group options share one composition.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.types import IntervalSweep

    parsed = _parse_overrides(task_overrides(overrides))
    if any(o.key_or_group == "hparams_search" for o in parsed):
        fixed_lines = [o.input_line for o in parsed if not o.is_sweep_override()]
        fixed = compose(fixed_lines)
        check_plugins(fixed, plugins)
        resolve(fixed)
        # Each value of a choice(...) or range(...) too, and both ends of an interval: an
        # unknown option or a value out of range is one line now, not a failed trial after
        # others have run.
        for override in parsed:
            if not override.is_sweep_override():
                continue
            if override.is_discrete_sweep():
                for value in override.sweep_string_iterator():
                    _check_search_value(fixed_lines, override, value)
            elif isinstance(override.value(), IntervalSweep):
                _check_interval(fixed_lines, override)
        return
    try:
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException as error:
        raise UserError(
            f"{one_line(str(error))}; a grid takes lists (a=1,2); for ranges "
            "(interval, tag(log, ...)) use hparams_search=random or hparams_search=tpe"
        ) from None
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    composed: dict[tuple[str, ...], DictConfig] = {}
    for number, job in enumerate(jobs):
        which = " ".join(o for o in job if o.lstrip("+~").partition("=")[0] in swept)
        try:
            groups = tuple(o for o in job if _is_group(o))
            if groups not in composed:
                composed[groups] = compose(list(groups))
            cfg = copy.deepcopy(composed[groups])
            values = [o for o in job if o not in groups]
            try:
                ConfigLoaderImpl._apply_overrides_to_config(_parse_overrides(values), cfg)
            except (HydraException, OmegaConfBaseException):
                cfg = compose(job)  # for its one-line message
            check_plugins(cfg, plugins)
            resolve(cfg)
        except UserError as error:
            error = in_recipe_file(error, job)
            raise UserError(f"sweep job {number} ({which}): {error}") from None


def _check_search_value(fixed_lines: list[str], override: Any, value: str) -> None:
    """UserError if the search ``override`` (``optimizer.lr=choice(0.1,-1)``) may give its
    key ``value``, and the config with it does not resolve."""
    key = override.get_key_element()
    try:
        resolve(compose([*fixed_lines, f"{key}={value}"]))
    except UserError as error:
        message = str(error)
        if message.startswith(f"unknown key {key.lstrip('+~')}"):
            # The key is wrong, not this value: the message a plain override gets, with the
            # search, not the value tried, in a suggested fix.
            search = override.input_line.partition("=")[2]
            raise UserError(message.replace(f"={value}?", f"={search}?")) from None
        raise UserError(f"{key}={value} (of {override.input_line}): {message}") from None


def _check_interval(fixed_lines: list[str], override: Any) -> None:
    """Both ends of ``interval(a, b)`` as values of its key (Optuna may sample either end);
    for a key that takes whole numbers, the ``int(...)`` that samples them instead of floats."""
    key, interval = override.get_key_element(), override.value()
    first: UserError | None = None
    for end in (interval.start, interval.end):
        try:
            _check_search_value(fixed_lines, override, repr(end))
        except UserError as error:
            # A float refused where the same whole number passes: the key takes integers.
            if isinstance(end, float) and end.is_integer():
                try:
                    _check_search_value(fixed_lines, override, str(int(end)))
                except UserError:
                    pass
                else:
                    search = override.input_line.partition("=")[2]
                    raise UserError(
                        f"{override.input_line}: {key.lstrip('+~')} takes whole numbers and "
                        f"an interval samples floats; write '{key}=int({search})'"
                    ) from None
            first = first or error
    if first is not None:
        raise first


def fixed_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep's overrides give one value (the same in every job)."""
    return sorted(
        {o.key_or_group for o in _parse_overrides(overrides) if not o.is_sweep_override()}
    )


def _is_group(override: str) -> bool:
    """Whether ``override`` chooses a config group's option (``optimizer=adam``)."""
    key = override.lstrip("+~").partition("=")[0]
    return "." not in key and (paths.config_dir() / key).is_dir()


# Hydra's settings that decide where a run's files go: trainkit's own, so that every file
# of a run lands in the run's own directory (chosen with hydra.run.dir or hydra.sweep.dir).
_HYDRA_PLACEMENT = {
    "output_subdir": None,
    "sweep.subdir": "${trainkit_job_name:${hydra.job.num},${hydra.job.override_dirname}}",
    "job.chdir": False,
}
_LOG_FILE = "${hydra.runtime.output_dir}/${hydra.job.name}.log"


def check_hydra(launch: DictConfig) -> None:
    """UserError if Hydra's settings (from an override or a recipe) would put a run's files
    outside its own directory, or two jobs in one (``hydra.output_subdir``,
    ``hydra.sweep.subdir``, a log file's name, ``hydra.job.chdir``)."""
    hydra = OmegaConf.to_container(launch.hydra, resolve=False)
    for key, expected in _HYDRA_PLACEMENT.items():
        value: Any = hydra
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value != expected:
            raise UserError(_placement(f"hydra.{key}"))
    for logging_key in ("job_logging", "hydra_logging"):
        handlers = (hydra.get(logging_key) or {}).get("handlers") or {}
        for name, handler in handlers.items():
            if isinstance(handler, Mapping) and handler.get("filename", _LOG_FILE) != _LOG_FILE:
                raise UserError(_placement(f"hydra.{logging_key}.handlers.{name}.filename"))
            if isinstance(handler, Mapping) and handler.get("mode", "a") != "a":
                raise UserError(_placement(f"hydra.{logging_key}.handlers.{name}.mode"))
    # The log file is named after the job: a name with a path in it puts it elsewhere.
    job_name = str((hydra.get("job") or {}).get("name") or "")
    if "/" in job_name or "\\" in job_name or job_name in (".", ".."):
        raise UserError(
            f"hydra.job.name={job_name} names the run's log file, and cannot hold a path; "
            "choose the run's directory with hydra.run.dir"
        )


# The code Hydra's config may name without this command line naming it: what trainkit's
# own config and Hydra's launchers and sweepers name. Anything else (a recipe's callback of
# logging.FileHandler truncates a file as surely as builtins.open) is the command line's.
_TRUSTED_CODE = {
    "hydra.callbacks.sweeps._target_": ("trainkit.sweeps.SweepCallback",),
    "hydra.launcher._target_": ("hydra._internal.core_plugins.", "hydra_plugins."),
    "hydra.sweeper._target_": ("hydra._internal.core_plugins.", "hydra_plugins."),
    "hydra.hydra_logging.handlers.console.class": ("logging.StreamHandler",),
    "hydra.hydra_logging.handlers.console.stream": ("ext://sys.stdout", "ext://sys.stderr"),
    "hydra.job_logging.handlers.console.()": ("trainkit.reporting.console_handler",),
    "hydra.job_logging.handlers.file.class": ("logging.FileHandler",),
}


def check_hydra_code(launch: DictConfig, command_line: list[str]) -> None:
    """UserError if Hydra would make an object of code (a ``_target_``, a log handler's
    ``class`` or ``()``, an ``ext://`` value) or set an environment variable
    (``hydra.job.env_set``) that neither trainkit's config names where it does
    (``_TRUSTED_CODE``) nor this command line names: a recipe file or a resumed run's files
    would otherwise run code by themselves.

    The whole config is read, unresolved: a code key anywhere (an interpolation can bring a
    node into Hydra's), and ``oc.create``/``oc.decode``, which make nodes out of text."""
    typed = [o.partition("=")[0].lstrip("+~") for o in command_line]

    def named(path: str) -> bool:
        return any(path == key or path.startswith(f"{key}.") for key in typed)

    def check(node: Any, path: str) -> None:
        if path.startswith("hydra.job.env_set.") and not named(path):
            # The environment of the run and of the processes it starts (DDP workers, a
            # sweep's): PYTHONPATH with a sitecustomize.py, LD_PRELOAD, PYTHONSTARTUP run code.
            raise UserError(
                f"{path}={node} sets the environment of the run's processes, which can make "
                "them run code, and only this command line may: remove it there, or set "
                f"{path} on the command line if you trust it"
            )
        if isinstance(node, Mapping):
            for key, value in node.items():
                check(value, f"{path}.{key}" if path else str(key))
            return
        if isinstance(node, list):
            for index, value in enumerate(node):
                check(value, f"{path}[{index}]")
            return
        if not isinstance(node, str) or named(path):
            return
        last = path.rpartition(".")[2]
        code = last in ("_target_", "class", "()") or node.startswith("ext://")
        if code and not node.startswith(_TRUSTED_CODE.get(path, ())):
            raise UserError(
                f"{path}={node} names code, and only this command line may: a recipe or a "
                f"run's files never decide what runs; remove it there, or set {path} on the "
                "command line if you trust it"
            )
        if "oc.create" in node or "oc.decode" in node:
            raise UserError(
                f"{path}={node} makes config out of text, which may name code, and only this "
                f"command line may: remove it there, or set {path} on the command line"
            )

    check(OmegaConf.to_container(launch, resolve=False), "")


def _placement(key: str) -> str:
    return (
        f"{key} is trainkit's to set: it keeps every file of a run in the run's own "
        "directory; choose that directory with hydra.run.dir (or hydra.sweep.dir)"
    )


def output_dir(launch: DictConfig, key: str) -> str:
    """``hydra.run.dir`` (or ``hydra.sweep.dir``) of a composed config, resolved once (its
    ``${now:...}`` gives another time on each reading); UserError if it cannot be."""
    try:
        return str(OmegaConf.select(launch, key, throw_on_missing=True))
    except OmegaConfBaseException as error:
        raise UserError(f"{key}: {one_line(str(error)).split(' full_key:')[0]}") from None


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The run's own config: ``cfg`` without its ``hydra`` node."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def override_value(overrides: list[str], key: str) -> Any:
    """The value the last override of ``key`` gives it (parsed and resolved as Hydra and
    OmegaConf do: ``'\\${x}'`` is the text ``${x}``), or None."""
    values = [o.value() for o in _parse_overrides(overrides) if o.key_or_group == key]
    if not values:
        return None
    try:
        return OmegaConf.to_container(OmegaConf.create({"value": values[-1]}), resolve=True)[
            "value"
        ]
    except OmegaConfBaseException:
        return values[-1]  # it refers to other keys of the config: taken as it is


def read_overrides(path: Path) -> list[str]:
    """A run's ``.hydra/overrides.yaml``: the overrides it was started with, read as data."""
    import yaml

    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot read {path}: {one_line(str(error))}") from None
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"{path} is not a list of overrides")
    return overrides


def resolve(cfg: DictConfig) -> DictConfig:
    """Check a composed config (``validate``) and return the config the run trains with
    (``effective``); UserError naming the first mistake. Needs no data and makes nothing."""
    validate(cfg)
    return effective(cfg)


def from_overrides(overrides: list[str]) -> DictConfig:
    """The checked config the run of ``overrides`` would train with, composed without a Hydra
    run (lr-plot, lr-find); a mistake a recipe file makes is said to be in that file."""
    try:
        return resolve(compose(prepare(overrides)))
    except UserError as error:
        raise in_recipe_file(error, overrides) from None


def effective(cfg: DictConfig) -> DictConfig:
    """The config the run trains with: the settings that regularizers stand for
    (``regularization=[weight_decay]``: ``optimizer.weight_decay``) written into a copy.
    UserError where that cannot work (a model without dropout), or where the config sets the
    same key to another value too. Idempotent: what checkpoints keep passes unchanged."""
    cfg = copy.deepcopy(cfg)
    for key, node in (cfg.get("regularization") or {}).items():
        REGULARIZERS.build(node, f"regularization.{key}").configure(cfg)
    return cfg


def _group_options(group: str) -> list[str]:
    return GlobalHydra.instance().config_loader().get_group_options(group)


def missing_option_message(error: MissingConfigException) -> str:
    """``unknown optimizer 'adamm'; did you mean 'adam'? available: ...`` for Hydra's error."""
    group, _, option = (error.missing_cfg_file or "").rpartition("/")
    return _unknown_option(group, option, error.options or _group_options(group))


def _unknown_option(group: str, option: str, options: Iterable[str]) -> str:
    registry = GROUP_REGISTRIES.get(group) or MULTI_GROUPS.get(group)
    kind = registry.kind if registry else group
    options = sorted(options)
    hint = difflib.get_close_matches(option, options, n=1)
    did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
    return f"unknown {kind} '{option}'; {did_you_mean}available: {', '.join(options)}"


def _value_hint(overrides: list[str]) -> str | None:
    """What is wrong with a value Hydra refuses without saying it: a sweep (``adam,sgd``)
    in a run of one; a group given a value that names no option (``debug=true``: Hydra
    reads true, 1 or null as such and says only that a group wants a string)."""
    for override, text in zip(_parse_overrides(overrides), overrides, strict=True):
        key, value = override.key_or_group, override.value()
        given = text.partition("=")[2]
        group = (paths.config_dir() / key).is_dir()
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return (
                f"{key}={given} is a range to search: add -m and a search, e.g. trainkit "
                f"train -m hparams_search=random '{key}={given}'"
            )
        if override.is_sweep_override():
            each = f"to train one run for each, add -m (trainkit train -m {key}={given})"
            if not group and override.is_choice_sweep() and "(" not in given:
                return f"{key}={given} is a sweep: {each}; for a list, write {key}=[{given}]"
            if not group:
                return f"{key}={given} is a sweep: {each}"
            both = f"{key}=[{given}] uses them all in one run; " if key in MULTI_GROUPS else ""
            return f"{key}={given} is a sweep: {both}{each}"
        if group and not isinstance(value, (str, list)):
            options = ", ".join(sorted(_group_options(key)))
            return f"{key}={given} names no {key} option; use {key}=NAME: {options}"
    return None


def _overridden_key(message: str) -> str | None:
    prefix = "Could not override '"
    if message.startswith(prefix):
        return message[len(prefix) :].split("'", 1)[0]
    return None


def _unknown_key(key: str, overrides: list[str], config_name: str) -> str:
    """ "unknown key optimizer.lrr; did you mean 'lr'? ..." from the config without the typo."""
    others = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
    parent, _, leaf = key.rpartition(".")
    node = None
    try:
        node = hydra_compose(config_name, overrides=others)
        siblings = OmegaConf.select(node, parent) if parent else node
    except Exception:
        siblings = None
    if parent and siblings is None:
        value = next((o.partition("=")[2] for o in overrides if o.lstrip("+~").startswith(key)), "")
        fixed = _fix_prefix(key, node)
        hint = f"; did you mean {fixed}={value}?" if fixed else ""
        group, _, option = parent.partition(".")
        if group in MULTI_GROUPS and (paths.config_dir() / group / f"{option}.yaml").is_file():
            hint = f" ({option} is not chosen); add it: {group}=[{option}] (or to your list)"
        return f"unknown key {key}: the config has no {parent}{hint}"
    if not isinstance(siblings, Mapping):
        return f"unknown key {key}"
    keys = [str(k) for k in siblings]
    hint = closest_key(leaf, keys)
    did_you_mean = f"did you mean '{hint}'? " if hint else ""
    return f"unknown key {key}; {did_you_mean}allowed keys: {', '.join(keys)}"


def _fix_prefix(key: str, node: Any) -> str | None:
    """``scheduler.warmup_epochs`` for ``schedular.warmup_epochs``: the key whose misspelled
    first part is closest to a top-level key of ``node`` that has the rest."""
    head, _, rest = key.partition(".")
    if not isinstance(node, Mapping):
        return None
    for candidate in difflib.get_close_matches(head, [str(k) for k in node], n=3):
        if OmegaConf.select(node, f"{candidate}.{rest}", default=_MISSING) is not _MISSING:
            return f"{candidate}.{rest}"
    return None


_MISSING = object()


def suggest_override(words: list[str]) -> str | None:
    """What a user used to other CLIs meant: ``--lr 0.1`` or ``--lr=0.1`` (a key named lr,
    optimizer.lr), ``--optimizer adam`` and ``optimizer adam`` (a group's option): the
    override to write instead, or None. ``words`` are the flag or word and its value."""
    name, _, value = words[0].lstrip("-").partition("=")
    value = value or (words[1] if len(words) > 1 else "VALUE")
    name = name.replace("-", "_")
    if (paths.config_dir() / name).is_dir():
        return f"{name}={value}"
    try:
        node = compose([])
    except UserError:
        return None
    flat = _flatten_keys(OmegaConf.to_container(node, resolve=False))
    if name in flat:
        return f"{name}={value}"
    matches = [key for key in flat if key.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return f"{matches[0]}={value}"
    if matches:
        return " or ".join(f"{key}={value}" for key in matches[:3])
    return None


def _flatten_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        keys = []
        for key, value in node.items():
            keys += _flatten_keys(value, f"{prefix}{key}.")
        return keys
    return [prefix[:-1]]


def _first_line(message: str) -> str:
    """The line of a Hydra message that says what is wrong (not its ``^`` marker or link)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip(" ^\t")]
    lines = [line for line in lines if not line.startswith("See ")]
    return lines[-1] if lines else message.strip()


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())


# --- validating ----------------------------------------------------------------------------


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python data, interpolations resolved; UserError on a bad one."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:
        raise UserError(f"cannot resolve the config: {one_line(str(error))}") from None


def validate(cfg: DictConfig) -> None:
    """Check every node of a composed config; raise UserError naming the first bad key."""
    # Imported here: they pull in torch, which `trainkit --help` must not wait for.
    from trainkit.distributed import check_devices
    from trainkit.models.resnet import check_weights
    from trainkit.tasks import check_task_loss

    container = to_container(cfg)
    _reject_missing(container)
    for key in container:
        if key not in TOP_LEVEL_KEYS:
            hint = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            raise UserError(
                f"unknown key {key}; {did_you_mean}allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}"
            )
    for group, registry in GROUP_REGISTRIES.items():
        node = _mapping(container, group)
        if group == "data":
            node, _ = split_data_node(node)
        if group == "scheduler":
            node, _ = split_scheduler_node(node)
        registry.check(node, group)
    check_task_loss(container["task"]["name"], container["loss"]["name"])
    check_weights(container["model"])  # a file to load: there, before any data is read
    for group, registry in MULTI_GROUPS.items():
        for key, node in (container.get(group) or {}).items():
            if not isinstance(node, Mapping):
                raise UserError(f"{group}.{key} must be a mapping with a name; got {node!r}")
            registry.check(node, f"{group}.{key}")
    trainer = check_params("trainer", _mapping(container, "trainer"), TrainerSettings)
    if trainer.get("monitor") not in (None, "auto"):
        check_metric_name("trainer.monitor", trainer["monitor"], container["task"]["name"])
    check_devices(trainer.get("device", "auto"), trainer.get("devices", 1))
    _check_fractions(container["data"])
    check_params("logger", _mapping(container, "logger"), LoggerSettings)
    tune = FinetuneSettings(
        **check_params("finetune", container.get("finetune") or {}, FinetuneSettings)
    )
    if tune.unfreeze_at_epoch and not tune.freeze:
        raise UserError(
            f"finetune.unfreeze_at_epoch={tune.unfreeze_at_epoch} unfreezes nothing: "
            "finetune.freeze is empty; name what to freeze until then, e.g. "
            "'finetune.freeze=[conv1.*,layer1.*]'"
        )
    if container.get("init_from") is not None and not isinstance(container["init_from"], str):
        raise UserError(f"init_from={container['init_from']!r} must be a path")


def check_metric_name(key: str, metric: str, task: str) -> None:
    """UserError when no run of ``task`` logs ``metric`` (given by ``key``): a misspelt name,
    found before any data is read or directory made. A monitor is a train or val metric; an
    objective (``hydra.sweeper.objectives``) may be a test one, a class's (test/f1/3), or a
    number of the run's summary (train_time_s)."""
    from trainkit.tasks import metrics_any_run_reports  # (torch: not for `trainkit --help`)

    monitor = key == "trainer.monitor"
    split = metric.split("/")[0]
    known = metrics_any_run_reports(task, ("train", "val") if monitor else ("train", "val", "test"))
    if known is None or (not monitor and split not in ("train", "val", "test")):
        return
    if "/".join(metric.split("/")[:2]) not in known:
        hint = difflib.get_close_matches(metric, sorted(known), n=1)
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        given, does = (
            (f"{key}={metric!r}", "monitors") if monitor else (f"{key}: {metric!r}", "logs")
        )
        raise UserError(
            f"{given} is not a metric a task={task} run {does}; {did_you_mean}"
            f"use one of {', '.join(sorted(known))}"
        )


def _check_fractions(data: Mapping[str, Any]) -> None:
    """The split fractions leave data to train on (found here, not once the data is read)."""
    # (a split read from a file of its own, data.val_path say, is not carved from the rest)
    fractions = [
        0 if data.get(f"{split}_path") else data.get(f"{split}_fraction") or 0
        for split in ("val", "test")
    ]
    if sum(fractions) >= 1:
        raise UserError(
            f"data.val_fraction + data.test_fraction = {sum(fractions):g}; "
            "they must sum to less than 1 so that some data is left to train on"
        )


def _mapping(container: dict[str, Any], key: str) -> Mapping[str, Any]:
    node = container.get(key)
    if not isinstance(node, Mapping):
        raise UserError(f"{key} must be a config node (a mapping), got {node!r}")
    return node


def _reject_missing(node: Any, where: str = "") -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _reject_missing(value, f"{where}.{key}" if where else str(key))
    elif node == "???":
        raise UserError(f"{where} is required; set it with {where}=VALUE")
