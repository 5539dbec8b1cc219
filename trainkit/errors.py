"""The one exception type for mistakes a user can make and fix, and the file-system errors
that become one: a full disk, a read-only mount, a name too long."""

from __future__ import annotations

import errno

# Errors of the file system that the user fixes (space, permissions, names), not bugs.
_FILE_SYSTEM_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "a name in the path is longer than the file system allows; shorten it",
    errno.EIO: "an input/output error; check the disk",
    errno.EFBIG: "the file is too large for the file system",
}


class UserError(Exception):
    """A bad config, override, path or file: printed as one line, exit status 2.

    The message names the key (or file) and says what is allowed, so the user can fix it
    without reading a traceback.
    """


def file_system_reason(error: BaseException) -> str | None:
    """Why the file system refused, for an OSError of the file system (or torch's
    RuntimeError around one, which torch.save raises on a full disk); None for anything else
    (a bug, not the user's to fix)."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno in _FILE_SYSTEM_ERRORS:
        return _FILE_SYSTEM_ERRORS[cause.errno]
    if isinstance(error, RuntimeError) and "No space left" in str(error):
        return _FILE_SYSTEM_ERRORS[errno.ENOSPC]
    return None


def file_system_error(error: BaseException, where: str) -> UserError | None:
    """A one-line UserError for a file-system error (see ``file_system_reason``), naming the
    file it names, or ``where``; None for anything else."""
    reason = file_system_reason(error)
    if reason is None:
        return None
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    target = getattr(cause, "filename", None) or where
    return UserError(f"cannot write {target}: {reason}")
