"""Name-to-builder maps for every configurable component, their parameter checks, and plugins.

A config node such as ``{name: adam, lr: 0.001}`` is built by looking ``name`` up in a
registry and calling the builder with the remaining keys. Before anything is built, the keys
are checked against the builder's signature: unknown keys, wrong types and out-of-range values
become one-line ``UserError``s that name the key.

Objects that only exist at run time (the model's parameters, the number of classes) are
declared per registry as ``runtime`` names and passed by keyword to the builders that ask
for them; a user cannot set them from the config.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal

from trainkit.errors import UserError

PLUGIN_ENTRY_POINT_GROUP = "trainkit.plugins"


# --- parameter constraints ---------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A bound on a number, used as ``Annotated[float, Range(gt=0)]``."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = True  # False: inf is allowed too (a norm's order, say)

    def describe(self) -> str:
        parts = [
            f"{symbol} {bound:g}"
            for symbol, bound in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if bound is not None
        ]
        return " and ".join(parts)

    def allows(self, value: float) -> bool:
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )


@dataclass(frozen=True)
class Form:
    """A form a number must have that a Range cannot say, used as
    ``Annotated[int, Form("6n+2", lambda d: (d - 2) % 6 == 0, "use 8, 14, 20 or 32")]``."""

    name: str
    test: Callable[[Any], bool]
    fix: str

    def describe(self) -> str:
        return f"of the form {self.name}"


PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
Probability = Annotated[float, Range(ge=0, lt=1)]  # dropout, smoothing, split fractions


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, Iterable, typing.Sequence) or annotation in (list, tuple):
        return "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        type(None): "null",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


_LARGEST_INT = 2**63 - 1
# Names users bring from papers and other tools for a key trainkit calls otherwise; offered
# where the component has that key (spelling alone would offer l1's weights_only for weight).
OTHER_NAMES = {
    "weight": "strength",
    "lambda": "strength",
    "learning_rate": "lr",
    "wd": "weight_decay",
    "beta1": "betas",
    "beta2": "betas",
}


def closest_key(key: str, keys: Iterable[str]) -> str | None:
    """The key of ``keys`` that ``key`` was meant to be: its other name, or the nearest spelling."""
    keys = list(keys)
    if OTHER_NAMES.get(key) in keys:
        return OTHER_NAMES[key]
    return next(iter(difflib.get_close_matches(key, keys, n=1)), None)


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise UserError unless ``value`` fits ``annotation`` (types, Literal, Range bounds)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        infinite_allowed = any(isinstance(b, Range) and not b.finite for b in extras)
        if not (infinite_allowed and isinstance(value, float) and math.isinf(value)):
            check_value(key, value, base)
        for bound in extras:
            if isinstance(bound, Range) and not bound.allows(value):
                raise UserError(f"{key}={value!r} is out of range: it must be {bound.describe()}")
            if isinstance(bound, Form) and not bound.test(value):
                raise UserError(f"{key}={value!r} is not {bound.name}; {bound.fix}")
        return
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        errors = []
        for option in options:
            try:
                check_value(key, value, option)
                return
            except UserError as error:
                errors.append(error)
        # A value of the right type but out of range: report the range, not the type.
        in_range_errors = [e for e in errors if "out of range" in str(e)]
        raise in_range_errors[0] if in_range_errors else _type_error(key, value, annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return
        if isinstance(value, str):  # a word, but not one of them
            hint = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            wanted = ", ".join(repr(c) for c in choices)
            raise UserError(f"{key}={value!r} is not a choice; {did_you_mean}choices: {wanted}")
        raise _type_error(key, value, annotation)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise _type_error(key, value, annotation)
        args = typing.get_args(annotation)
        fixed_length = origin is tuple and args and Ellipsis not in args
        if fixed_length and len(value) != len(args):
            raise UserError(f"{key}={_plain(value)!r} must have {len(args)} items")
        for index, item in enumerate(value):
            if args:
                item_type = args[index] if fixed_length else args[0]
                check_value(f"{key}[{index}]", item, item_type)
        return
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, value, annotation)
        return
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise UserError(f"{key}={value!r} is not a finite number; give a number such as 0.1")
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and abs(value) > _LARGEST_INT:  # torch and Python's C code take 64-bit ints
            raise UserError(f"{key}={value} is too large: it must be at most {_LARGEST_INT}")
    elif annotation is type(None):
        ok = value is None
    elif isinstance(annotation, type):
        ok = isinstance(value, annotation)
    else:
        ok = True  # an annotation we do not interpret (a protocol, a forward reference)
    if not ok:
        raise _type_error(key, value, annotation)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, Iterable) and not isinstance(value, str) else value


def _type_error(key: str, value: Any, annotation: Any) -> UserError:
    wanted = _type_name(annotation)
    if wanted.startswith("a list") and isinstance(value, str | int | float):  # no brackets
        wanted += f" in brackets: {key}=[{value}]"
    # As the user wrote it on the command line or in YAML: null and true, not None and True.
    spelled = (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    )
    return UserError(f"{key}={spelled} has the wrong type: it must be {wanted}")


def check_params(
    where: str, params: Mapping[str, Any], target: Callable, runtime: Iterable[str] = ()
) -> dict[str, Any]:
    """Check config ``params`` against ``target``'s signature; return them as a plain dict.

    ``where`` is the config key of the node (``optimizer``), used in every message.
    """
    signature = inspect.signature(target)
    hints = _hints(target)
    runtime = set(runtime)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    settable = {
        name: p
        for name, p in signature.parameters.items()
        if name not in runtime and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    for key in params:
        if key in runtime:
            raise UserError(
                f"{where}.{key} is set by trainkit at run time; remove it from the config"
            )
        if key not in settable and not accepts_any:
            hint = closest_key(key, settable)
            did_you_mean = f"did you mean '{hint}'? " if hint else ""
            allowed = ", ".join(settable) or "none"
            raise UserError(f"unknown key {where}.{key}; {did_you_mean}allowed keys: {allowed}")
    for name, parameter in settable.items():
        if name in params:
            check_value(f"{where}.{name}", params[name], hints.get(name, parameter.annotation))
        elif parameter.default is inspect.Parameter.empty:
            raise UserError(f"{where}.{name} is required; set it with {where}.{name}=VALUE")
    return {key: _plain_data(value) for key, value in params.items()}


def _plain_data(value: Any) -> Any:
    """Config values as plain dicts and lists (not OmegaConf's nodes, which would travel on
    into a checkpoint that ``torch.load(weights_only=True)`` then refuses)."""
    if isinstance(value, Mapping):
        return {key: _plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Iterable)
        and not isinstance(value, (str, bytes))
        and hasattr(value, "__len__")
    ):
        return [_plain_data(item) for item in value]
    return value


def _hints(target: Callable) -> dict[str, Any]:
    """The type hints of ``target``'s parameters (a class's are its ``__init__``'s, not its
    attributes'); none when they cannot be resolved (forward references in a user's plugin:
    its keys are checked, not its values)."""
    function = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:
        return {}


def describe_parameters(
    target: Callable, runtime: Iterable[str] = (), defaults: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(name, "type = default")`` for each parameter a config may set, for ``trainkit ls``;
    ``defaults`` (the option's YAML) win over the signature's, as they do in a run."""
    defaults = defaults or {}
    hints = _hints(target)
    rows = []
    for name, parameter in inspect.signature(target).parameters.items():
        if name in runtime or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(name, parameter.annotation)
        kind = "" if annotation is inspect.Parameter.empty else _type_with_range(annotation)
        default = defaults.get(name, parameter.default)
        if default is inspect.Parameter.empty or default == "???":
            shown = "required"
        else:
            shown = _as_config(default)
        rows.append((name, f"{kind} = {shown}" if kind else shown))
    return rows


def _type_with_range(annotation: Any) -> str:
    """``an integer >= 1 or null``: the type, with the range of each bounded part."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_with_range(a) for a in typing.get_args(annotation))
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        bounds = [bound.describe() for bound in extras if isinstance(bound, Range | Form)]
        return " ".join([_type_name(base), *bounds])
    return _type_name(annotation)


def _as_config(value: Any) -> str:
    """A default as one writes it on the command line: true, null, [0.9, 0.999]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_config(item) for item in value) + "]"
    return repr(value)


# --- the registry --------------------------------------------------------------------------


class Registry:
    """Maps a config ``name:`` to the callable that builds that component."""

    def __init__(self, kind: str, runtime: Iterable[str] = ()):
        self.kind = kind
        self.runtime = tuple(runtime)
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: ``@OPTIMIZERS.register("adam")`` on a function or class."""

        def add(builder: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            hint = difflib.get_close_matches(str(name), self._builders, n=1)
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            raise UserError(
                f"unknown {self.kind} '{name}'; {did_you_mean}available: {', '.join(self.names())}"
            )
        return self._builders[name]

    def check(self, node: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """Validate a config node (``name`` plus parameters) without building anything."""
        where = where or self.kind
        params = dict(node)
        if "name" not in params:
            raise UserError(f"{where}.name is missing; set it to one of: {', '.join(self.names())}")
        builder = self.get(params.pop("name"))
        return check_params(where, params, builder, self.runtime)

    def takes(self, name: str, parameter: str) -> bool:
        """Whether the builder of ``name`` takes ``parameter`` (by name, or as ``**kwargs``)."""
        accepted = inspect.signature(self.get(name)).parameters
        return parameter in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values())

    def build(self, node: Mapping[str, Any], where: str | None = None, **runtime: Any) -> Any:
        """Check ``node`` and call its builder; runtime objects go to builders that take them."""
        params = self.check(node, where)
        wanted = {k: v for k, v in runtime.items() if self.takes(node["name"], k)}
        return self._builders[node["name"]](**params, **wanted)


MODELS = Registry("model", runtime=("num_classes", "input_shape", "vocab_size"))
DATASETS = Registry("dataset")
LOSSES = Registry("loss", runtime=("num_classes", "class_counts"))
OPTIMIZERS = Registry("optimizer", runtime=("model",))
SCHEDULERS = Registry(
    "scheduler", runtime=("optimizer", "per_epoch", "total", "interval", "monitor_mode")
)
REGULARIZERS = Registry("regularizer")
AUGMENTATIONS = Registry("augmentation", runtime=("image_size",))
TASKS = Registry("task", runtime=("splits", "loss"))

# Config groups whose single option is built through a registry, and those of several.
GROUP_REGISTRIES: dict[str, Registry] = {
    "data": DATASETS,
    "model": MODELS,
    "loss": LOSSES,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "augmentation": AUGMENTATIONS,
    "task": TASKS,
}
MULTI_GROUPS: dict[str, Registry] = {"regularization": REGULARIZERS}

_BUILTIN_MODULES = (
    "trainkit.data",
    "trainkit.models",
    "trainkit.losses",
    "trainkit.optim",
    "trainkit.schedulers",
    "trainkit.regularization",
    "trainkit.augment",
    "trainkit.tasks",
)


def plugins_not_named(wanted: Any, named: Iterable[str]) -> str | None:
    """A config's ``plugins`` (a list, one name or None) as ``[a,b]`` when it holds a module
    that ``named`` (this command line's ``plugins=``) lacks, else None. A file never decides
    what code is imported: its callers refuse the config then."""
    if not wanted:
        return None
    wanted = [str(wanted)] if isinstance(wanted, str) else [str(module) for module in wanted]
    if all(module in named for module in wanted):
        return None
    return "[" + ",".join(wanted) + "]"


def load_components(plugins: Iterable[str] = ()) -> None:
    """Import the built-in components, installed plugins (entry points) and ``plugins``."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for entry_point in entry_points(group=PLUGIN_ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:
            raise UserError(
                f"plugin entry point '{entry_point.name}' ({entry_point.value}) failed to load: "
                f"{error}"
            ) from error
    if plugins and os.getcwd() not in sys.path:
        # A console script's sys.path starts at its own bin/ directory, not where the user is.
        # Last: the named module is found here, and no file here stands in for another module.
        sys.path.append(os.getcwd())
    for module in plugins:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name == module or module.startswith(f"{error.name}."):
                raise UserError(
                    f"plugins: cannot import '{module}'; put {module}.py in the current "
                    "directory or install the package that provides it"
                ) from None
            raise UserError(
                f"plugins: '{module}' imports '{error.name}', which is not installed"
            ) from None
        except Exception as error:
            raise UserError(
                f"plugins: importing '{module}' failed{_where(error)}: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from None


def _where(error: BaseException) -> str:
    """`` (at file.py:12)``: the innermost frame of the traceback, where the plugin failed."""
    frame = error.__traceback__
    if frame is None:
        return ""
    while frame.tb_next is not None:
        frame = frame.tb_next
    return f" (at {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
