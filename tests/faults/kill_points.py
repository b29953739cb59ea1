"""SIGKILL a sweep's processes from inside, at the moments a crash hurts most.

Not imported by the tests: tests/faults/test_kill.py copies it as `sitecustomize.py` onto the
PYTHONPATH of the sweep it launches, so that Python runs it at the start of every process of
the sweep (the launcher and each run). Once `scaling.record` and `scaling.checkpoint` are
imported, it wraps them, so that a process kills itself with SIGKILL:

- `record`: inside a record write, once `atomic_write` has written its temporary file and before
  the rename that puts it in place;
- `after-record`: right after a record write, once the rename is done (the record says more than
  before: whatever it claims must hold from that moment on);
- `checkpoint`: inside a checkpoint save, right after `Checkpointer.save` has started Orbax's
  asynchronous save, while it writes and commits.

A moment is named within the process, whatever step it resumed from: the n-th write of a file
(`summary.json#1`), the n-th save (`save #2`).

Each such moment is a fault with probability FAULT_P_<KIND> (`after-record`:
FAULT_P_AFTER_RECORD), decided by a hash of (FAULT_SEED, FAULT_LAUNCH, the run, the kind, the
moment): the same decisions however long anything takes. The run is named by its directory's
readable part (`L1-d16-T32-D8.19k-s0`), without the hash of its config, which holds the corpus's
path: a temporary directory's. Before its kill, a process appends one line per fault to FAULT_LOG
(`kind<TAB>run<TAB>moment<TAB>detail`, O_APPEND, fsync'd), for the test to count.
"""

import functools
import hashlib
import importlib.abc
import importlib.machinery
import os
import signal
import sys
from collections import Counter
from pathlib import Path

ENV = "FAULT_"


def run_name(run_dir: Path) -> str:
    """A run's directory name without its config's hash: the same in every test session."""
    return run_dir.name.rsplit("-", 1)[0]


def fires(kind: str, run: str, moment: str) -> bool:
    """Whether this moment is a fault: a pure function of the seed, the launch and the moment."""
    p = float(os.environ.get(f"{ENV}P_{kind.upper().replace('-', '_')}", "0"))
    key = ":".join([os.environ.get(f"{ENV}SEED", "0"), os.environ.get(f"{ENV}LAUNCH", "0"), run,
                    kind, moment])
    draw = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return draw < p


def die(kind: str, run: str, moment: str, detail: str = "") -> None:
    """Log the fault durably, then SIGKILL this process: no handler, no cleanup runs."""
    fd = os.open(os.environ[f"{ENV}LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind}\t{run}\t{moment}\t{detail}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def wrap_record(record) -> None:
    """Faults around `scaling.record.atomic_write`, the one writer of every record file."""
    original = record.atomic_write
    writes: Counter[str] = Counter()  # this process's writes of each file, numbering them

    @functools.wraps(original)
    def atomic_write(path, write) -> None:
        path = Path(path)
        writes[path.name] += 1
        run, moment = run_name(path.parent), f"{path.name}#{writes[path.name]}"

        def write_then_die(tmp: str) -> None:
            write(tmp)
            if fires("record", run, moment):
                die("record", run, moment)

        original(path, write_then_die)
        if fires("after-record", run, moment):
            die("after-record", run, moment)

    record.atomic_write = atomic_write


def wrap_checkpoint(checkpoint) -> None:
    """Faults in `scaling.checkpoint.Checkpointer.save`, while Orbax saves asynchronously."""
    original = checkpoint.Checkpointer.save
    saves: Counter[str] = Counter()  # this process's saves of each run, numbering them

    @functools.wraps(original)
    def save(self, step, state, meta) -> None:
        original(self, step, state, meta)
        run = run_name(self.directory.parent)
        saves[run] += 1
        moment = f"save #{saves[run]}"
        if fires("checkpoint", run, moment):
            committed = (self.directory / str(step)).is_dir()
            die("checkpoint", run, f"{moment} (step {step})",
                "after its commit" if committed else "before its commit")

    checkpoint.Checkpointer.save = save


WRAPPERS = {"scaling.record": wrap_record, "scaling.checkpoint": wrap_checkpoint}


class WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds the modules of WRAPPERS as Python would, and wraps each once it has run."""

    def find_spec(self, name, path, target=None):
        if name not in WRAPPERS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            WRAPPERS[name](module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get(f"{ENV}LOG"):
    sys.meta_path.insert(0, WrapOnImport())
