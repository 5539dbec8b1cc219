"""Run and sweep directories that trainkit owns.

A run writes only into a directory that this invocation made, or one that was empty, or (to
resume) the directory of its own earlier run. A lock held while it writes keeps a second
process out. A run that fails before it has trained removes what this invocation made, and
nothing else: never a directory that was there before, never a file it did not write.

Nothing here imports torch: the CLI claims the directory before anything heavy is built.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
import urllib.parse
from pathlib import Path

from trainkit.errors import UserError
from trainkit.paths import check_writable, nearest_existing

LOCK_FILE = ".trainkit.lock"

# What trainkit writes into a directory it owns: removed when a command fails before a
# checkpoint exists (before which nothing is worth keeping), and only those names.
_WRITTEN_BEFORE_TRAINING = (
    ".hydra",
    "train.log",
    "metrics.jsonl",
    "failed.json",
    "predictions.csv",
    "summary.json",
    "checkpoints",  # (removed only while it holds no checkpoint)
    "multirun.yaml",  # a sweep's, written before its first job
    "optuna.db",  # an Optuna search's study, made before its first trial
)
_EVENTS_PREFIX = "events.out.tfevents."


class OwnedDirectory:
    """A run or sweep directory this process holds the lock of, and what it made for it."""

    def __init__(self, path: Path, made: list[Path], lock: int, new: bool):
        """``made``: the directories this invocation made for it, outermost first; ``new``:
        whether it holds only what this invocation writes (not so for a resumed run)."""
        self.path, self.made, self._lock, self.new = path, made, lock, new

    def release(self) -> None:
        """Give the lock up (its file goes: this invocation wrote it)."""
        if self._lock < 0:
            return
        try:
            os.unlink(self.path / LOCK_FILE)
        except OSError:
            pass  # already gone with a discarded directory
        os.close(self._lock)  # closing the descriptor releases the lock
        self._lock = -1

    def discard_if_untrained(self) -> bool:
        """After a failure: if this is a new directory and no checkpoint was written (no job
        ran, for a sweep), remove what this invocation wrote here, then the directories it
        made, innermost first, where they are empty. Returns whether it did."""
        trained = any((self.path / "checkpoints").glob("*.pt")) or _has_job_dirs(self.path)
        if not self.new or trained:
            self.release()
            return False
        for entry in _listdir(self.path):
            if entry in _WRITTEN_BEFORE_TRAINING or entry.startswith(_EVENTS_PREFIX):
                target = self.path / entry
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        self.release()
        remove_made(self.made)
        return True


_WAIT = "wait for it to end, or name another directory"


def claim_new(path: str | Path, key: str, continue_study: bool = False) -> OwnedDirectory:
    """Make the directory ``path`` for a new run (or sweep) and lock it.

    An existing directory is used only when it is empty (or, with ``continue_study``, when it
    holds the Optuna study that a sweep continues). ``key`` is the config key that names it
    (``hydra.run.dir``); every refusal says which key to set, and changes nothing on disk.
    """
    if "${" in str(path):
        raise UserError(
            f"{key}={path}: a run directory's name cannot hold '${{' (Hydra would read it as "
            "a reference to a config key); choose another name"
        )
    absolute = Path(os.path.abspath(Path(path).expanduser()))  # (brandnew/.. is the cwd)
    # Refusals that need no write first: the write test touches the folder it writes in.
    _check_name_lengths(absolute, key)
    if absolute.is_dir():
        _refuse_unless_free(absolute, key, [], continue_study)
        if (absolute / LOCK_FILE).is_symlink():
            raise _lock_file_is_a_link(absolute, key)
    elif os.path.lexists(absolute):
        raise _not_a_directory(absolute, key)
    check_writable(Path(path).expanduser(), key)
    path = absolute
    made = make_folders(path.parent, key)
    try:
        os.mkdir(path)
        made.append(path)
    except FileExistsError:
        if not path.is_dir():  # (made meanwhile by another process)
            remove_made(made)
            raise _not_a_directory(path, key) from None
    except OSError as error:
        remove_made(made)
        raise _cannot_make(path, key, error) from None
    # What is in it decides before the lock is taken, so that a refusal touches nothing, not
    # even a lock file a killed run left; and again once no other trainkit can write there.
    _refuse_unless_free(path, key, made, continue_study)
    lock = _lock(path, key, made)
    try:
        entries = _refuse_unless_free(path, key, made, continue_study)
    except UserError:
        _unlock(path, lock)
        raise
    return OwnedDirectory(path, made, lock, new=not entries)


def _not_a_directory(path: Path, key: str) -> UserError:
    what = "a link to nothing" if path.is_symlink() and not path.exists() else "a file"
    return UserError(f"{key}={path} is {what}, not a directory; name a new directory")


def _lock_file_is_a_link(path: Path, key: str) -> UserError:
    return UserError(
        f"{key}={path}: {LOCK_FILE} there is a link, not trainkit's lock file; "
        "name another directory"
    )


def _check_name_lengths(path: Path, key: str) -> None:
    """UserError for a part of ``path`` longer than a file name may be."""
    try:
        limit = os.pathconf(nearest_existing(path), "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    if any(len(os.fsencode(part)) > limit for part in path.parts):
        raise _cannot_make(path, key, OSError(errno.ENAMETOOLONG, "File name too long"))


def _refuse_unless_free(path: Path, key: str, made: list[Path], continue_study: bool):
    """What ``path`` holds (besides a lock file); UserError unless that is nothing, or the
    study a sweep continues."""
    entries = [] if path in made else sorted(e for e in _listdir(path) if e != LOCK_FILE)
    if entries and not (continue_study and holds_study(path)):
        remove_made(made)
        raise UserError(_not_empty(path, key, entries, continue_study))
    return entries


def holds_study(path: Path) -> bool:
    """Whether ``path`` holds a trainkit sweep's Optuna study: an SQLite file ``optuna.db``
    with Optuna's tables and a study named ``trainkit`` (conf/hparams_search)."""
    import sqlite3

    database = path / "optuna.db"
    if not database.is_file() or database.is_symlink():
        return False
    try:
        with open(database, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                return False
        uri = f"file:{urllib.parse.quote(str(database))}?mode=ro"
        connection = sqlite3.connect(uri, uri=True)
        try:
            rows = connection.execute("SELECT study_name FROM studies").fetchall()
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return False
    return ("trainkit",) in rows


def claim_run(run_dir: str | Path, key: str = "resume") -> OwnedDirectory:
    """Lock an existing run's directory to continue writing it (``resume=``); UserError
    when a file the run goes on writing is not one a run writes (see ``_check_run_files``)."""
    path = Path(run_dir).absolute()
    _check_run_files(path, key)
    return lock_run(path, key)


def lock_run(
    run_dir: str | Path,
    key: str,
    fix: str = _WAIT,
    named: str | None = None,
) -> OwnedDirectory:
    """Lock an existing run's directory while this process writes into it; UserError saying
    that ``named`` (``KEY=RUN_DIR``) is being written by the process that holds it, and
    ``fix``."""
    path = Path(run_dir).absolute()
    return OwnedDirectory(path, [], _lock(path, key, [], fix, named), new=False)


def _check_run_files(path: Path, key: str) -> None:
    """A run directory from elsewhere (downloaded, unpacked, shared) may hold a link where
    the run writes (its log, its config, its predictions): following it, the resumed run
    would write a file outside the run. trainkit makes no links there, nor hard links to
    its log, which is appended to."""
    names = [*_WRITTEN_BEFORE_TRAINING, LOCK_FILE]
    entries = [path / name for name in names]
    for folder in (".hydra", "checkpoints"):
        if (path / folder).is_dir() and not (path / folder).is_symlink():
            entries += sorted((path / folder).iterdir())
    entries += sorted(path.glob(f"{_EVENTS_PREFIX}*"))
    for entry in entries:
        if entry.is_symlink():
            raise UserError(
                f"{key}={path}: {entry.relative_to(path)} is a link, and a run trainkit wrote "
                "has none; the run would write through it. Remove the link, or start a new run"
            )
    log = path / "train.log"
    if log.is_file() and log.stat().st_nlink > 1:
        raise UserError(
            f"{key}={path}: train.log has other names (hard links), and the run appends to "
            "it; copy it to a file of its own (cp train.log x && mv x train.log) or start a "
            "new run"
        )


def free_file_name(path: str | Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ...: the first name not taken (for
    an output whose name the user did not choose)."""
    path = Path(path)
    candidate, number = path, 1
    while os.path.lexists(candidate):  # (a dangling link is taken too)
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def write_new_file(path: str | Path, data: bytes, key: str, or_next_free: bool = False) -> Path:
    """Write ``data`` to ``path``, which must not exist (trainkit overwrites nothing it did
    not write in this invocation), making missing parent directories; ``key`` names the
    option in errors. With ``or_next_free`` (a default name, not one the user chose) a
    taken name moves on as ``free_file_name`` does, also when another command took it
    meanwhile. Returns the path written. On failure, what was made is removed and the error
    is one line."""
    path = first = Path(path).expanduser()
    made = make_folders(path.absolute().parent, key)
    while True:
        created = False
        try:
            with open(path, "xb") as handle:
                created = True
                handle.write(data)
            return path
        except FileExistsError:
            if not or_next_free:
                remove_made(made)
                raise UserError(
                    f"{key}={path} exists, and trainkit does not overwrite files; name a new file"
                ) from None
            path = free_file_name(first)
        except OSError as error:
            if created:
                path.unlink()  # made by this open: what was written of it is of no use
            remove_made(made)
            raise _cannot_make(path, key, error) from None


def check_can_write(path: str | Path, key: str) -> None:
    """Raise the UserError ``write_new_file`` would for ``path``'s directory (under a file,
    or not writable), before a long computation whose result goes there."""
    path = Path(path).expanduser()
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise _cannot_make(path, key, NotADirectoryError(errno.ENOTDIR, "Not a directory"))
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise _cannot_make(path, key, PermissionError(errno.EACCES, "Permission denied"))


def remove_made(made: list[Path]) -> None:
    """Remove the directories in ``made`` (outermost first) that are empty, innermost first."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:
            return  # something is in it that this invocation did not make: keep it and above


# --- helpers -------------------------------------------------------------------------------


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _has_job_dirs(path: Path) -> bool:
    """A sweep directory with at least one job directory in it (kept: it has failed.json)."""
    return any((path / entry / ".hydra").is_dir() for entry in _listdir(path))


def make_folders(directory: Path, key: str) -> list[Path]:
    """Make ``directory`` and any missing ancestors; the ones this call made (none another
    process made meanwhile), outermost first. ``key`` names the option in errors."""
    missing, named = [], directory
    while not directory.exists():
        if directory.name in ("..", "."):  # made, "nonexist/.." would leave nonexist behind
            raise UserError(
                f"{key}: {named} goes through a folder that does not exist ({directory.parent}); "
                "name the folder without '..'"
            )
        missing.append(directory)
        directory = directory.parent
    made: list[Path] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue  # another process made it meanwhile: not ours
        except OSError as error:
            remove_made(made)
            raise _cannot_make(directory, key, error) from None
        made.append(directory)
    return made


def _cannot_make(path: Path, key: str, error: OSError) -> UserError:
    if error.errno == errno.ENAMETOOLONG:
        longest = max(path.parts, key=lambda part: len(os.fsencode(part)))
        return UserError(
            f"{key}={path}: the name {longest[:40]!r}... ({len(os.fsencode(longest))} bytes) "
            "is longer than the file system allows (usually 255 bytes); choose a shorter name"
        )
    reason = (error.strerror or type(error).__name__).lower()
    if isinstance(error, IsADirectoryError | NotADirectoryError):
        return UserError(f"cannot write {path} ({reason}); set {key}=ANOTHER_PATH")
    return UserError(f"cannot write {path} ({reason}); set {key}=SOMEWHERE_WRITABLE")


def _lock(
    path: Path,
    key: str,
    made: list[Path],
    fix: str = _WAIT,
    named: str | None = None,
) -> int:
    """Take the directory's lock, or raise UserError naming the process that holds it.

    The lock is an flock on ``LOCK_FILE``, which holds who took it. A lock file whose
    holder has ended is taken over: the kernel drops a dead process's flock.
    """
    lock_file = path / LOCK_FILE
    while True:
        try:
            # O_NOFOLLOW: a link planted in the lock file's place is not followed, or written.
            descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            remove_made(made)
            if error.errno == errno.ELOOP:
                raise _lock_file_is_a_link(path, key) from None
            raise _cannot_make(lock_file, key, error) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            remove_made(made)
            raise UserError(
                f"{_holder_message(named or f'{key}={path}', lock_file)}; {fix}"
            ) from None
        # The holder before us may have unlinked the file between our open and our flock:
        # then we hold a lock on a file nobody else will open. Try again on the new one.
        try:
            same = os.stat(lock_file).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same and os.fstat(descriptor).st_nlink > 1:  # truncating it would empty another
            _unlock_only(descriptor)
            remove_made(made)
            raise UserError(
                f"{key}={path}: {LOCK_FILE} there has other names (hard links), so it is not "
                "trainkit's lock file; remove it, or name another directory"
            )
        if same:
            break
        os.close(descriptor)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["trainkit", *sys.argv[1:]])[:500],
    }
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, (json.dumps(holder) + "\n").encode())
    except OSError as error:
        _unlock(path, descriptor)
        remove_made(made)
        raise _cannot_make(lock_file, key, error) from None
    return descriptor


def _unlock_only(descriptor: int) -> None:
    """Give up a lock on a file that is not trainkit's, leaving the file where it is."""
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    os.close(descriptor)


def _unlock(path: Path, descriptor: int) -> None:
    try:
        os.unlink(path / LOCK_FILE)
    except OSError:
        pass
    os.close(descriptor)


def _holder_message(named: str, lock_file: Path) -> str:
    """``named`` (``hydra.run.dir=PATH``) is being written by whom the lock file names."""
    try:
        descriptor = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor) as handle:
            holder = json.loads(handle.read(4096))
        who = f"process {holder['pid']} on {holder['host']} (started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another process"
    return f"{named} is being written by {who}"


def is_held(path: Path) -> bool:
    """Whether a process holds ``path``'s lock (asked without changing the lock file)."""
    try:
        descriptor = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


def _not_empty(path: Path, key: str, entries: list[str], continue_study: bool) -> str:
    if is_held(path):
        return f"{_holder_message(f'{key}={path}', path / LOCK_FILE)}; {_WAIT}"
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    if ".hydra" in entries:
        from trainkit.overrides import resume_command

        if (path / "summary.json").is_file():  # (resume would say: nothing to resume)
            return (
                f"{key}={path} holds a finished run; name a new directory (to start from its "
                f"weights: init_from={path})"
            )
        if (path / "checkpoints" / "last.pt").is_file():
            return (
                f"{key}={path} holds a run already; continue it with `{resume_command(path)}`, "
                "or name a new directory"
            )
        return (
            f"{key}={path} holds a run that saved no checkpoint (it stopped before its first); "
            "name a new directory, or delete that one"
        )
    if continue_study and "optuna.db" in entries:
        return (
            f"{key}={path} holds an optuna.db that is not a trainkit sweep's study (an Optuna "
            "SQLite storage with a study named trainkit); name a new directory"
        )
    return f"{key}={path} is not empty (it holds {shown}); name a new or empty directory"
