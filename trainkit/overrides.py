"""Overrides that trainkit writes for the user to paste, or for Hydra to parse back.

A path may hold anything a file name can (spaces, ``,``, ``=``, ``'``, ``${``, letters
outside ASCII), and Hydra's override grammar gives most of those a meaning. A value quoted
here parses back to itself, and a command line printed here pastes into a POSIX shell.
"""

from __future__ import annotations

import re
import shlex

# A path that Hydra's grammar reads as itself, unquoted (a "/" keeps it from being read as a
# number, a boolean or null).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./:\-]*/[A-Za-z0-9_./:\-]*")


def quote_value(value: str) -> str:
    """``value`` as a Hydra override value that parses (and resolves) back to ``value``."""
    if _PLAIN_PATH.fullmatch(value):
        return value
    # OmegaConf: \${ is a literal "${" (the backslashes before it double).
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    # Hydra's quoted strings: backslashes before a quote or the end double; quotes escape.
    escaped = re.sub(
        r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), escaped
    )
    return f"'{escaped}'"


def override(key: str, value: str) -> str:
    """``key=value`` with the value quoted as Hydra needs."""
    return f"{key}={quote_value(str(value))}"


def command(*words: str) -> str:
    """A command line for a POSIX shell: each word quoted as the shell needs (in double
    quotes where that reads better: a Hydra value in single quotes)."""
    return " ".join(_shell_word(word) for word in words)


def _shell_word(word: str) -> str:
    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


def resume_command(run_dir) -> str:
    """The command that continues the run in ``run_dir``, ready to paste."""
    return command("trainkit", "train", override("resume", str(run_dir)))
