"""Where trainkit's own YAML lives (beside the package in a checkout, inside it in a wheel),
and whether a run's output directory can be written."""

import os
import tempfile
from pathlib import Path

from trainkit.errors import UserError

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


def option_defaults(group: str, name: str) -> dict:
    """The values ``conf/<group>/<name>.yaml`` gives its option's keys ({} without a file):
    what a run uses when nothing overrides them."""
    import yaml

    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        return {}
    node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {key: value for key, value in node.items() if key != "defaults"}


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (os.path.exists: not one under a file
    or a folder this process may not enter)."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(directory: Path, key: str) -> None:
    """Raise UserError unless run directories can be made at ``directory`` (relative to the
    working directory; it need not exist yet). ``key`` is the config key that moves it, such
    as ``hydra.run.dir``; the message tells the user to set it.

    Its nearest existing ancestor must be a directory this process may create files in:
    checked with os.access, then by creating and removing a temporary file there, because
    os.access can say yes where writing fails (root on a read-only or root-squashed mount).
    """
    fix = f"set {key}=SOMEWHERE_WRITABLE"
    if not Path(directory).is_absolute():
        fix += " or run from a writable directory"
    existing = nearest_existing(Path(directory).absolute())
    if not existing.is_dir():
        raise UserError(
            f"cannot write run directories under {directory}: {existing} is a file, "
            f"not a directory; {fix}"
        )
    reason = None if os.access(existing, os.W_OK | os.X_OK) else "permission denied"
    if reason is None:
        try:
            handle, probe = tempfile.mkstemp(prefix=".trainkit-write-test-", dir=existing)
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            reason = (error.strerror or type(error).__name__).lower()
    if reason is not None:
        raise UserError(f"cannot write run directories under {existing} ({reason}); {fix}")
