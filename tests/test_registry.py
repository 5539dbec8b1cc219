"""Registries: building, parameter checks, and the built-in components' YAML files."""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

import pytest
from omegaconf import OmegaConf

from trainkit import paths
from trainkit.errors import UserError
from trainkit.registry import (
    AUGMENTATIONS,
    DATASETS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    REGULARIZERS,
    SCHEDULERS,
    TASKS,
    Form,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
    Registry,
    describe_parameters,
    load_components,
)

# --- a small registry of our own -----------------------------------------------------------


def make_registry() -> Registry:
    registry = Registry("optimizer", runtime=("model",))

    @registry.register("adam")
    def adam(model, lr: PositiveFloat = 1e-3, steps: int = 1, momentum: Probability = 0.5):
        return {"kind": "adam", "model": model, "lr": lr, "steps": steps, "momentum": momentum}

    @registry.register("sgd")
    def sgd(lr: float = 0.1):  # takes no runtime object
        return {"kind": "sgd", "lr": lr}

    return registry


def test_build_passes_params_and_runtime_objects():
    registry = make_registry()
    model = object()
    built = registry.build({"name": "adam", "lr": 0.5, "steps": 3}, model=model)
    assert built == {"kind": "adam", "model": model, "lr": 0.5, "steps": 3, "momentum": 0.5}


def test_build_passes_runtime_objects_only_to_builders_that_take_them():
    registry = make_registry()
    assert registry.build({"name": "sgd", "lr": 0.2}, model=object()) == {"kind": "sgd", "lr": 0.2}


def test_build_passes_runtime_objects_to_builders_with_var_keyword():
    registry = Registry("thing", runtime=("model",))

    @registry.register("any")
    def anything(size: int = 1, **extra):
        return size, extra

    assert registry.build({"name": "any", "size": 2}, model="m") == (2, {"model": "m"})


def test_registering_a_name_twice_raises():
    registry = make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("adam")(lambda: None)
    assert registry.names() == ["adam", "sgd"]


def test_names_and_contains():
    registry = make_registry()
    assert registry.names() == ["adam", "sgd"]
    assert "adam" in registry and "adamw" not in registry


def test_unknown_name_suggests_the_closest():
    registry = make_registry()
    with pytest.raises(UserError) as error:
        registry.build({"name": "adamm"}, model=None)
    assert (
        str(error.value) == "unknown optimizer 'adamm'; did you mean 'adam'? available: adam, sgd"
    )


def test_unknown_name_without_a_close_match():
    registry = make_registry()
    with pytest.raises(UserError) as error:
        registry.get("lbfgs")
    assert str(error.value) == "unknown optimizer 'lbfgs'; available: adam, sgd"


def test_missing_name():
    with pytest.raises(
        UserError, match=r"^optimizer\.name is missing; set it to one of: adam, sgd$"
    ):
        make_registry().check({"lr": 0.1})


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError) as error:
        make_registry().check({"name": "adam", "lrr": 0.1})
    assert str(error.value) == (
        "unknown key optimizer.lrr; did you mean 'lr'? allowed keys: lr, steps, momentum"
    )


@pytest.mark.parametrize(
    ("key", "meant"),
    [("learning_rate", "lr"), ("weight", None), ("lrr", "lr"), ("lambda", None)],
)
def test_unknown_key_suggests_its_other_name_where_the_component_has_it(key, meant):
    """learning_rate is lr here; weight and lambda are a penalty's strength, which this
    component has not (and spelling alone finds nothing near them)."""
    with pytest.raises(UserError) as error:
        make_registry().check({"name": "adam", key: 0.1})
    hint = f"did you mean '{meant}'? " if meant else ""
    assert (
        str(error.value) == f"unknown key optimizer.{key}; {hint}allowed keys: lr, steps, momentum"
    )


def test_where_names_the_node_in_messages():
    with pytest.raises(UserError, match=r"^unknown key regularization\.clip\.lrr;"):
        make_registry().check({"name": "adam", "lrr": 0.1}, where="regularization.clip")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": "3"}, "optimizer.steps='3' has the wrong type: it must be an integer"),
        ({"steps": True}, "optimizer.steps=true has the wrong type: it must be an integer"),
        ({"lr": None}, "optimizer.lr=null has the wrong type: it must be a number"),
        ({"steps": 2.0}, "optimizer.steps=2.0 has the wrong type: it must be an integer"),
        ({"lr": "fast"}, "optimizer.lr='fast' has the wrong type: it must be a number"),
        ({"lr": False}, "optimizer.lr=false has the wrong type: it must be a number"),
        ({"lr": -1}, "optimizer.lr=-1 is out of range: it must be > 0"),
        ({"lr": 0}, "optimizer.lr=0 is out of range: it must be > 0"),
        ({"lr": 0.0}, "optimizer.lr=0.0 is out of range: it must be > 0"),
        ({"momentum": 1.0}, "optimizer.momentum=1.0 is out of range: it must be >= 0 and < 1"),
        ({"momentum": -0.1}, "optimizer.momentum=-0.1 is out of range: it must be >= 0 and < 1"),
    ],
)
def test_wrong_types_and_ranges_are_rejected(params, message):
    with pytest.raises(UserError) as error:
        make_registry().check({"name": "adam", **params})
    assert str(error.value) == message


def test_ints_are_accepted_for_floats_and_boundaries_for_ranges():
    registry = make_registry()
    assert registry.check({"name": "adam", "lr": 1, "momentum": 0}) == {"lr": 1, "momentum": 0}
    assert registry.check({"name": "adam", "momentum": 0.999}) == {"momentum": 0.999}


def test_literal_values():
    registry = Registry("regularizer")

    @registry.register("clip")
    def clip(by: Literal["norm", "value"] = "norm"):
        return by

    assert registry.build({"name": "clip", "by": "value"}) == "value"
    with pytest.raises(UserError) as error:
        registry.check({"name": "clip", "by": "abs"})
    assert str(error.value) == ("regularizer.by='abs' is not a choice; choices: 'norm', 'value'")


def test_required_params():
    registry = Registry("scheduler", runtime=("optimizer",))

    @registry.register("step")
    def step(optimizer, step_size: PositiveInt, gamma: float = 0.1):
        return optimizer, step_size, gamma

    with pytest.raises(UserError) as error:
        registry.check({"name": "step"})
    assert (
        str(error.value) == "scheduler.step_size is required; set it with scheduler.step_size=VALUE"
    )
    # The runtime parameter is required too, but never asked of the user.
    assert registry.build({"name": "step", "step_size": 2}, optimizer="o") == ("o", 2, 0.1)


def test_runtime_names_cannot_be_set_by_the_user():
    with pytest.raises(UserError) as error:
        make_registry().check({"name": "adam", "model": "resnet"})
    assert str(error.value) == (
        "optimizer.model is set by trainkit at run time; remove it from the config"
    )
    # Even for a builder that does not take it.
    with pytest.raises(UserError, match="set by trainkit at run time"):
        make_registry().check({"name": "sgd", "model": "resnet"})


def test_optional_accepts_none_and_checks_the_value():
    registry = Registry("loss")

    @registry.register("ce")
    def ce(weight: list[float] | None = None, smoothing: PositiveFloat | None = None):
        return weight, smoothing

    assert registry.build({"name": "ce", "weight": None, "smoothing": None}) == (None, None)
    assert registry.build({"name": "ce", "weight": [1.0, 2], "smoothing": 0.1}) == ([1.0, 2], 0.1)
    with pytest.raises(UserError, match=r"^loss\.smoothing=-1 is out of range: it must be > 0$"):
        registry.check({"name": "ce", "smoothing": -1})
    with pytest.raises(UserError, match=r"^loss\.weight='x' has the wrong type"):
        registry.check({"name": "ce", "weight": "x"})


def test_a_class_is_checked_against_the_hints_of_its_init():
    # This module reads its annotations as strings (from __future__ import annotations): a
    # class's hints are its __init__'s, not its attributes'.
    registry = Registry("regularizer")

    @registry.register("ema")
    class Ema:
        decay: str  # an attribute's hint, which is not the parameter's

        def __init__(self, decay: Probability = 0.9):
            self.decay = decay

    assert registry.build({"name": "ema", "decay": 0.5}).decay == 0.5
    with pytest.raises(UserError, match=r"^regularizer\.decay=2 is out of range: it must be >= 0"):
        registry.check({"name": "ema", "decay": 2})
    assert dict(describe_parameters(Ema))["decay"] == "a number >= 0 and < 1 = 0.9"


Depth = Annotated[int, Range(ge=8), Form("6n+2", lambda d: (d - 2) % 6 == 0, "use 8 or 14")]


def test_a_form_is_checked_and_described():
    registry = Registry("model")

    @registry.register("resnet")
    def resnet(depth: Depth = 8):
        return depth

    assert registry.build({"name": "resnet", "depth": 14}) == 14
    with pytest.raises(UserError) as error:
        registry.check({"name": "resnet", "depth": 9})
    assert str(error.value) == "model.depth=9 is not 6n+2; use 8 or 14"
    with pytest.raises(UserError, match=r"^model\.depth=2 is out of range: it must be >= 8$"):
        registry.check({"name": "resnet", "depth": 2})
    assert describe_parameters(resnet) == [("depth", "an integer >= 8 of the form 6n+2 = 8")]


def test_list_items_are_checked():
    registry = Registry("model")

    @registry.register("mlp")
    def mlp(hidden: list[PositiveInt] = (8,)):
        return hidden

    assert registry.build({"name": "mlp", "hidden": [4, 5]}) == [4, 5]
    assert registry.build({"name": "mlp", "hidden": []}) == []
    with pytest.raises(UserError) as error:
        registry.check({"name": "mlp", "hidden": [4, 0]})
    assert str(error.value) == "model.hidden[1]=0 is out of range: it must be >= 1"
    with pytest.raises(UserError, match=r"^model\.hidden\[0\]='4' has the wrong type"):
        registry.check({"name": "mlp", "hidden": ["4"]})
    for not_a_list, said in (("44", "[44]"), (4, "[4]"), ({"a": 4}, None)):
        with pytest.raises(UserError) as error:
            registry.check({"name": "mlp", "hidden": not_a_list})
        hint = f" in brackets: model.hidden={said}" if said else ""
        assert str(error.value).endswith(f"it must be a list{hint}")


# --- the built-in registries ---------------------------------------------------------------

load_components()

# registry -> (config group, whether the YAML nests the node under a key equal to the name)
BUILTIN = {
    "model": (MODELS, "model", False),
    "loss": (LOSSES, "loss", False),
    "optimizer": (OPTIMIZERS, "optimizer", False),
    "scheduler": (SCHEDULERS, "scheduler", False),
    "augmentation": (AUGMENTATIONS, "augmentation", False),
    "regularizer": (REGULARIZERS, "regularization", True),
    "dataset": (DATASETS, "data", False),
    "task": (TASKS, "task", False),
}

COMPONENTS = [
    pytest.param(kind, name, id=f"{kind}-{name}")
    for kind, (registry, _, _) in BUILTIN.items()
    for name in registry.names()
    # Plugins loaded from an installed entry point bring no YAML file of their own.
    if registry.get(name).__module__.startswith("trainkit.")
]


@pytest.mark.parametrize("kind", list(BUILTIN))
def test_builtin_registries_are_not_empty(kind):
    registry, _, _ = BUILTIN[kind]
    assert registry.kind == kind
    assert len(registry.names()) >= 1


def test_expected_builtin_components_are_registered():
    assert {"mlp", "resnet_cifar"} <= set(MODELS.names())
    assert {"sgd", "adam"} <= set(OPTIMIZERS.names())
    assert {
        "constant",
        "cosine",
        "step",
        "multistep",
        "exponential",
        "cosine_restarts",
        "poly",
        "onecycle",
        "inverse_sqrt",
        "plateau",
    } <= set(SCHEDULERS.names())
    assert {"grad_clip", "early_stopping"} <= set(REGULARIZERS.names())
    assert {"digits", "synthetic"} <= set(DATASETS.names())
    assert {"none", "digits"} <= set(AUGMENTATIONS.names())
    assert "cross_entropy" in LOSSES.names()


def _yaml_node(kind: str, name: str) -> dict:
    _, group, nested = BUILTIN[kind]
    path = paths.config_dir() / group / f"{name}.yaml"
    assert path.is_file(), f"{kind} {name!r} is registered but {path} is missing"
    node = OmegaConf.to_container(OmegaConf.load(path))
    node.pop("defaults", None)  # the choices this option implies (data=diabetes: task=regression)
    if nested:
        assert list(node) == [name], f"{path} must nest its node under '{name}'"
        node = node[name]
    return node


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_every_component_has_a_yaml_whose_name_matches(kind, name):
    assert _yaml_node(kind, name)["name"] == name


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_every_yaml_key_is_a_parameter_of_the_builder(kind, name):
    registry, group, _ = BUILTIN[kind]
    node = _yaml_node(kind, name)
    if group == "data":
        from trainkit.data import split_data_node

        node, _ = split_data_node(node)  # batch sizes etc. go to the loaders
    if group == "scheduler":
        from trainkit.schedulers import split_scheduler_node

        node, _ = split_scheduler_node(node)  # interval and warmup are shared by all
    parameters = inspect.signature(registry.get(name)).parameters
    for key in node:
        if key != "name":
            assert key in parameters, f"{group}/{name}.yaml: '{key}' is not a parameter"
            assert key not in registry.runtime, f"{group}/{name}.yaml sets runtime '{key}'"
    # And the YAML's values pass the builder's own checks.
    registry.check(node, group)


def test_data_yaml_loader_keys_are_loader_settings():
    from trainkit.data import LoaderSettings, split_data_node

    for name in DATASETS.names():
        node = _yaml_node("dataset", name)
        dataset_node, settings = split_data_node(node)
        assert set(node) - set(dataset_node) <= set(LoaderSettings.__dataclass_fields__)
        assert isinstance(settings, LoaderSettings)


def test_missing_plugin_module_is_a_user_error():
    with pytest.raises(UserError) as error:
        load_components(plugins=["some_missing_module_xyz"])
    assert "some_missing_module_xyz" in str(error.value)
    assert str(error.value).startswith("plugins: cannot import 'some_missing_module_xyz'")


def test_a_plugin_that_imports_something_missing_names_it(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin_xyz.py").write_text("import another_missing_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as error:
        load_components(plugins=["broken_plugin_xyz"])
    assert str(error.value) == (
        "plugins: 'broken_plugin_xyz' imports 'another_missing_module_xyz', which is not installed"
    )


def test_a_plugin_that_raises_on_import_is_one_line_with_where(tmp_path, monkeypatch):
    (tmp_path / "raising_plugin_xyz.py").write_text("x = 1\nraise ValueError('bad\\nthing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as error:
        load_components(plugins=["raising_plugin_xyz"])
    assert str(error.value) == (
        "plugins: importing 'raising_plugin_xyz' failed "
        f"(at {tmp_path / 'raising_plugin_xyz.py'}:2): ValueError: bad"
    )
