"""Where trainkit's own YAML lives: beside the package in a checkout, inside it in a wheel."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"trainkit's {name}/ directory is missing from the installation")


def config_dir() -> Path:
    """The Hydra config root (conf/)."""
    return _find("conf")


def recipes_dir() -> Path:
    """The bundled experiment recipes (recipes/)."""
    return _find("recipes")
