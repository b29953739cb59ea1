"""The error policy of every console script: one line on stderr that says what to fix.

A mistake the user can fix (a bad config key or value, a file that cannot be read or written, a
missing column, a full disk) ends the command with `PROG: error: <one line>` and exit status 2,
no traceback. Hydra's and OmegaConf's multi-line messages are condensed to the key and the
reason, a full disk to the path and the OS's words whichever library met it, and lists
that grow with the input are cut to their first few items and a count. Anything else is a bug:
one line with the exception's type and status 1. SCALING_DEBUG=1 (or HYDRA_FULL_ERROR=1)
re-raises instead, with the full traceback.

Only the standard library is imported here, so that `scaling-fit` (analysis/) can share the
policy without importing the trainer; Hydra's and OmegaConf's exceptions are recognised only
once those libraries are loaded.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import io
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import NoReturn

USER_ERROR = 2  # the user can fix it; argparse uses 2 for usage errors too
BUG = 1

# A full disk or an exceeded quota: the user's to fix by freeing space, whichever library met it.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# TensorStore (Orbax's checkpoints) reports one as a ValueError whose message quotes the file and
# ends in the OS's words: `Failed writing: "/run/x": ... No space left on device [...]`.
_QUOTED_PATH = re.compile(r'"(/[^"]*)"')
SHOWN = 6  # items of a long list that an error message names before "and N more"
MAX_CHARS = 400  # a message longer than this (one huge item) is cut


class UsageError(ValueError):
    """A mistake in the command line, a config or an input file; the message names which."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors raised as `UsageError` (one line) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        """Raise the usage error for `exit_status` to report."""
        raise UsageError(f"{message} (see {self.prog} --help)")


def listing(items: Sequence[object], shown: int = SHOWN, sep: str = ", ") -> str:
    """`a, b, c and 46 more`: the first `shown` items and a count, never the whole list."""
    names = [str(item) for item in items]
    if len(names) <= shown:
        return sep.join(names)
    return f"{sep.join(names[:shown])} and {len(names) - shown} more"


def suggestion(name: str, choices: Sequence[str], prefix: str = "") -> str:
    """`; did you mean PREFIX+X?` when `name` looks like a typo of X, one of `choices`, else ''.

    The prefix (`train.`) is left out of the comparison, where it would make any two keys alike.
    """
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def debugging() -> bool:
    """Whether the user asked for tracebacks: SCALING_DEBUG=1, or HYDRA_FULL_ERROR=1 when
    SCALING_DEBUG is unset (`hydra_entry` sets both for its own subprocesses)."""
    return os.environ.get("SCALING_DEBUG", os.environ.get("HYDRA_FULL_ERROR")) == "1"


# A run of SHOWN + 3 or more short comma-separated items: a list some message spelled out in
# full (every column of a table, every dropped point), cut to its first few.
_LONG_LIST = re.compile(rf"[^,;:()\[\]\n]{{1,60}}(?:, [^,;:()\[\]\n]{{1,60}}){{{SHOWN + 2},}}")


def one_line(text: str) -> str:
    """`text` as one line: its first paragraph (what follows a blank line is detail, such as
    Hydra's config search path), lines joined, long lists cut to a count, then a length cap."""
    parts = [part.strip() for part in text.strip().split("\n\n")[0].splitlines() if part.strip()]
    line = parts[0] if parts else ""
    for part in parts[1:]:
        # a line ending in punctuation runs on into the next; any other was an item of its own
        line += f" {part}" if line[-1] in ".:;," else f"; {part}"
    line = _LONG_LIST.sub(lambda m: listing(m.group(0).split(", ")), line)
    return line if len(line) <= MAX_CHARS else f"{line[:MAX_CHARS - 1]}…"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _loaded(module: str, name: str) -> type[BaseException] | None:
    """An exception class of a library, if the library is loaded (else nothing raised it)."""
    return getattr(sys.modules.get(module), name, None)


def _omegaconf_message(error: BaseException) -> str:
    """OmegaConf's message without its full_key/reference_type/object_type lines, keyed."""
    key = getattr(error, "full_key", None) or ""
    reason = _first_line(str(error))
    if isinstance(error, (KeyError, AttributeError)) and reason.startswith("Key '"):
        schema = getattr(error, "object_type", None)
        if not is_dataclass(schema):
            return f"{key} is not a config key"
        prefix = key.removesuffix(str(error.key))  # train.nosuch -> train.
        moved = getattr(schema, "moved_keys", {}).get(str(error.key))  # a key of old configs
        if moved:
            return f"{key} is not a config key any more: it moved to {moved}"
        declared = [f.name for f in fields(schema)]
        hint = (suggestion(str(error.key), declared, prefix)
                or f"; {schema.__name__} has {listing([prefix + name for name in declared])}")
        return f"{key} is not a config key{hint}"
    return f"{key}: {reason}" if key and key not in reason else reason


def _hydra_message(error: BaseException) -> str:
    """Hydra's exceptions, condensed: the override or config group and what is wrong."""
    options = getattr(error, "options", None)
    missing = getattr(error, "missing_cfg_file", None)
    if options and missing:  # `model=nosuch`: a config group has no such option
        group, _, name = missing.rpartition("/")
        return (f"{group}={name} is not an option of {group}: expected one of "
                f"{listing(options)}{suggestion(name, options)}")
    override = getattr(error, "override", None)
    if override is not None:  # a line the override grammar cannot parse
        return (f"cannot parse override {override!r}: {_first_line(error.message)} "
                "(Hydra's override grammar)")
    cause = error.__cause__
    omegaconf_error = _loaded("omegaconf.errors", "OmegaConfBaseException")
    if cause is not None and omegaconf_error and isinstance(cause, omegaconf_error):
        return _omegaconf_message(cause)  # its key and reason say more than Hydra's wrapper
    return one_line(str(error))


def _raised_by(error: BaseException, package: str) -> bool:
    """Whether the innermost frame of `error`'s traceback is in `package`."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module == package or module.startswith(f"{package}.")


def _refused_by_slurm(error: BaseException) -> str | None:
    """sbatch's own error line where Slurm refused to queue a job (submitit raises the
    FailedJobError of the failed sbatch command): a request the cluster cannot meet, the
    user's to fix in hydra.launcher.*; None for anything else, a job that ran and failed
    included."""
    failed = _loaded("submitit.core.utils", "FailedJobError")
    line = re.search(r"sbatch: error: .*", str(error)) if failed and isinstance(error, failed) \
        else None
    return line.group(0) if line else None


def _open_file(error: BaseException) -> str | None:
    """The name of a file open in the frame that raised `error`, if one is: an OSError from a
    write or a close (`with open(...) as f:` on a full disk) names no file, its frame does."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    names = [value.name for value in (tb.tb_frame.f_locals.values() if tb else ())
             if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str)]
    return names[0] if names else None


def disk_full(error: BaseException) -> str | None:
    """`PATH: No space left on device` where `error`, or an error it was raised from or while
    handling, says that a disk (or a quota) is full, whichever library wrote: an OSError with
    ENOSPC or EDQUOT (PATH its file, or the file its frame had open), or a message in the OS's
    words for it (PATH the first absolute path it quotes); None otherwise. PATH is left out
    where nothing names one."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            where, reason = error.filename or _open_file(error), os.strerror(error.errno)
        else:
            reason = next((os.strerror(code) for code in DISK_FULL
                           if os.strerror(code) in str(error)), None)
            quoted = _QUOTED_PATH.search(str(error)) if reason else None
            where = quoted.group(1) if quoted else None
        if reason:
            return f"{where}: {reason}" if where else reason
        error = error.__cause__ or error.__context__
    return None


def describe(error: BaseException) -> str:
    """`error` as one line naming what to fix (the key, override, file or column)."""
    full = disk_full(error)
    if full:
        return f"{full} (free some space, then run the same command again)"
    refused = _refused_by_slurm(error)
    if refused:
        return (f"Slurm refused the job: {refused} (check hydra.launcher.partition, "
                "gpus_per_node, cpus_per_task, mem_gb and timeout_min against the cluster: "
                "docs/slurm.md)")
    hydra_error = _loaded("hydra.errors", "HydraException")
    omegaconf_error = _loaded("omegaconf.errors", "OmegaConfBaseException")
    if hydra_error and isinstance(error, hydra_error):
        return one_line(_hydra_message(error))
    if omegaconf_error and isinstance(error, omegaconf_error):
        return one_line(_omegaconf_message(error))
    if isinstance(error, OSError) and error.filename and error.strerror:
        return one_line(f"{error.filename}: {error.strerror}")
    return one_line(str(error))


def is_user_error(error: BaseException, user_errors: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether `error` is the user's to fix: a `UsageError` (ConfigError included), one of
    `user_errors`, a file that cannot be read or written, or an error of Hydra or OmegaConf
    reading the command line and config, or a full disk (`disk_full`)."""
    kinds = (UsageError, OSError, *user_errors,
             *filter(None, (_loaded("hydra.errors", "HydraException"),
                            _loaded("omegaconf.errors", "OmegaConfBaseException"))))
    # Hydra checks its own flags with plain ValueErrors (`-m --cfg job`: one mode at a time)
    return (isinstance(error, kinds) or _raised_by(error, "hydra")
            or _refused_by_slurm(error) is not None or disk_full(error) is not None)


def program() -> str:
    """The running command's name (`scaling-train`), as argparse names it."""
    return Path(sys.argv[0]).name


def print_error(message: str, prog: str | None = None) -> None:
    """Write `PROG: error: message` to stderr as one line."""
    print(f"{prog or program()}: error: {one_line(message)}", file=sys.stderr, flush=True)


def exit_status(error: Exception, prog: str | None = None,
                user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Report `error` as one line on stderr; return 2 for a user's mistake, 1 for a bug.

    Every console script's top level sends its exceptions here. Under `debugging()` it
    re-raises `error` instead, so Python prints the whole traceback.
    """
    if debugging():
        raise error
    if is_user_error(error, user_errors):
        print_error(describe(error), prog)
        return USER_ERROR
    print_error(f"unexpected {type(error).__name__}: {describe(error)} "
                "(a bug? SCALING_DEBUG=1 shows the traceback)", prog)
    return BUG
