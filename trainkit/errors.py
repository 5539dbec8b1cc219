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


def file_system_error(error: BaseException, where: str = "") -> UserError | None:
    """A UserError for an OSError of the file system (or torch's RuntimeError around one,
    which torch.save raises on a full disk), naming the file; None for anything else.

    ``where`` names what was being written when the error has no file name of its own.
    """
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno in _FILE_SYSTEM_ERRORS:
        target = cause.filename or where
        reason = _FILE_SYSTEM_ERRORS[cause.errno]
        return UserError(f"cannot write {target}: {reason}" if target else f"{reason}")
    text = str(error)
    if isinstance(error, RuntimeError) and ("write failed" in text or "No space left" in text):
        # torch's C++ writer says only that writing failed; the usual reason is space.
        return UserError(
            f"cannot write {where or 'a file'}: the write failed (is the disk full?); "
            "free some space"
        )
    return None
