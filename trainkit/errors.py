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


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's may run to pages), or the name of
    its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: the GPU's (torch.OutOfMemoryError, or a
    library's RuntimeError), or the CPU allocator's refusal."""
    if type(error).__name__ == "OutOfMemoryError":
        return True
    # What cuBLAS, cuDNN and the CPU allocator raise when an allocation fails.
    signs = ("out of memory", "can't allocate memory", "CUDNN_STATUS_ALLOC_FAILED")
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in signs)


def gpu_memory(error: BaseException) -> bool:
    """Whether an out-of-memory ``error`` is the GPU's."""
    return type(error).__name__ == "OutOfMemoryError" or "CUD" in str(error)


def out_of_memory(error: BaseException, fix: str) -> UserError:
    """torch's out-of-memory error as one line: what was asked for and what the device had
    free (torch's figures, where it gave them), then ``fix``."""
    import re

    message = " ".join(str(error).split())
    size = r"([\d.]+ [KMGT]i?B)"
    asked = re.search(rf"Tried to allocate {size}", message)
    total = re.search(rf"total capacity of {size} of which {size} is free", message)
    cpu_asked = re.search(r"tried to allocate (\d+) bytes", message)
    figures = []
    if asked:
        figures.append(f"asked for {asked.group(1)}")
    elif cpu_asked:
        figures.append(f"asked for {int(cpu_asked.group(1)) / 2**30:.2f} GiB")
    if total:
        figures.append(f"{total.group(2)} of {total.group(1)} free")
    said = f" ({'; '.join(figures)})" if figures else ""
    where = "the GPU" if gpu_memory(error) else "the machine"
    return UserError(f"out of memory on {where}{said}; {fix}")
