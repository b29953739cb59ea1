"""A single-node Slurm cluster on this machine: for trying `hydra/launcher=slurm` without a
cluster (`make slurm-up`, `make slurm-down`) and for the tests of tests/slurm/.

`start` installs Debian's slurm-wlm and munge when missing (apt-get, as root), writes the
machine's munge key when there is none (/etc/munge/munge.key: 1 KiB from /dev/urandom, mode
0400, owned by munge) and starts munged, then slurmctld and slurmd as root on localhost, with a
minimal slurm.conf in a directory of their own (state, spool, logs). What works in a container
with Slurm 22.05: processes tracked without cgroups (proctrack/linuxproc, task/none), cores and
memory as consumable resources (select/cons_tres), the node described as slurmd itself sees the
machine (`slurmd -C`), no accounting database. Clients (sbatch, squeue, submitit, the jobs
themselves) find the cluster through SLURM_CONF. docs/slurm.md says why each setting is there.

    python -m scaling.slurm_local up [--dir DIR]    # prints how to use it and stop it
    python -m scaling.slurm_local down [--dir DIR]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scaling.console import ArgumentParser, UsageError, exit_status

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")  # munged's socket and pid file, where every munge client looks
PARTITION = "local"
DAEMONS_FILE = "daemons.json"  # {name: pid} of what `start` started, for `stop`
CONF = "slurm.conf"
CRED_EXPIRE_S = 10


class ClusterError(UsageError):
    """The local cluster cannot start (not root, a package or daemon that fails); the message
    says which and where its log is."""


@dataclass(frozen=True)
class Cluster:
    """A running local cluster: its directory, slurm.conf and partition."""

    root: Path
    partition: str = PARTITION

    @property
    def conf(self) -> Path:
        return self.root / CONF

    @property
    def env(self) -> dict[str, str]:
        """The environment for its clients: os.environ with SLURM_CONF pointing at it."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, timeout: float = 30) -> str:
        """A Slurm client command against this cluster; its stdout. Raises ClusterError."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed: "
                               f"{(done.stderr or done.stdout).strip() or done.returncode}")
        return done.stdout


def default_dir() -> Path:
    """Where `make slurm-up` keeps its cluster: one per user, in the temp directory."""
    return Path(tempfile.gettempdir()) / f"scaling-slurm-{os.getuid()}"


def missing_packages() -> list[str]:
    """The Debian packages of PACKAGES whose programs are not on PATH."""
    wanted = {"slurm-wlm": ("slurmctld", "slurmd", "sbatch"), "munge": ("munged", "munge")}
    return [p for p in PACKAGES if not all(shutil.which(cmd) for cmd in wanted[p])]


def install() -> None:
    """apt-get install slurm-wlm and munge when their programs are missing (root only)."""
    missing = missing_packages()
    if not missing:
        return
    _require_root(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed: {_last_line(done.stderr)}")


def _require_root(doing: str) -> None:
    if os.geteuid() != 0:
        raise ClusterError(f"{doing} needs root (slurmd, slurmctld and munged run as root "
                           "here; docs/slurm.md); run as root, e.g. in CI")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()),
                "no output")


def munge_works() -> bool:
    """Whether a credential made by munge decodes (munged is up, with a readable key)."""
    try:
        credential = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        decoded = subprocess.run(["unmunge"], input=credential.stdout, capture_output=True,
                                 timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return credential.returncode == 0 and decoded.returncode == 0


def start_munge(timeout_s: float = 20) -> int | None:
    """Make munge work: the key written if there is none, munged started as the munge user if
    it is not running. Returns munged's pid if started here (None: it was running already)."""
    if munge_works():
        return None
    _require_root("starting munged")
    if not MUNGE_KEY.exists():
        # 1 KiB of randomness, as munge's own docs write a key; munged refuses any key that
        # others could read or that is not its user's.
        subprocess.run(["dd", "if=/dev/urandom", f"of={MUNGE_KEY}", "bs=1", "count=1024"],
                       check=True, capture_output=True)
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    MUNGE_RUN.mkdir(parents=True, exist_ok=True)  # /run is a fresh tmpfs in a container
    shutil.chown(MUNGE_RUN, "munge", "munge")
    done = subprocess.run(["runuser", "-u", "munge", "--", "munged"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise ClusterError(f"munged did not start: {_last_line(done.stderr)}")
    deadline = time.monotonic() + timeout_s
    while not munge_works():
        if time.monotonic() > deadline:
            raise ClusterError(f"munge does not work {timeout_s:.0f}s after starting munged "
                               "(its log: /var/log/munge/munged.log)")
        time.sleep(0.2)
    return int((MUNGE_RUN / "munged.pid").read_text().strip())


def node_line() -> str:
    """This machine as a slurm.conf node line, as slurmd sees it (`slurmd -C`: its name, CPUs
    and sockets, RealMemory in MB): a node configured with more than it finds is drained."""
    done = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = next((line for line in done.stdout.splitlines() if line.startswith("NodeName=")),
                None)
    if done.returncode != 0 or line is None:
        raise ClusterError(f"slurmd -C did not describe this machine: "
                           f"{_last_line(done.stderr or done.stdout)}")
    return line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, node: str, partition: str = PARTITION) -> str:
    """A minimal slurm.conf for one node on localhost, everything it writes under `root`.

    `node` is `node_line()`'s `NodeName=HOST CPUs=...`. Ports are free ones, so that it runs
    beside another Slurm; SlurmUser root, as the daemons run as root.
    """
    host = node.split()[0].removeprefix("NodeName=")
    return "\n".join([
        "ClusterName=scaling-local",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        # A requeued job waits out the step credential's lifetime before it starts again
        # (120 s by default): 10 s here, on one quiet node.
        f"AuthInfo=cred_expire={CRED_EXPIRE_S}",
        "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        # Without cgroups: a container rarely lets slurmd create its own.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        # Cores and memory consumable: jobs of one CPU each share the node.
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # Pending jobs tested every 2 s, not 60: a requeued job starts once it is eligible.
        "SchedulerParameters=sched_interval=2",
        "ReturnToService=2",
        # A killed step's processes get this long after SIGTERM before SIGKILL.
        "KillWait=30",
        f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
        f"PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def start(root: Path, partition: str = PARTITION, timeout_s: float = 60) -> Cluster:
    """Install what is missing, start munged, slurmctld and slurmd with a fresh slurm.conf in
    `root`, and wait until the node is idle. Raises ClusterError (one line naming the log)
    if any of it fails; daemons started before the failure are stopped."""
    _require_root("starting a local Slurm cluster")
    install()
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root.resolve(), partition)
    if _alive(_daemons(cluster.root)):
        raise ClusterError(f"a local cluster is already running in {cluster.root} "
                           "(stop it first: make slurm-down)")
    for sub in ("state", "spool"):
        (cluster.root / sub).mkdir(exist_ok=True)
    started: dict[str, int] = {}
    munged = start_munge()
    if munged is not None:
        started["munged"] = munged
    try:
        cluster.conf.write_text(slurm_conf(cluster.root, node_line(), partition))
        for daemon in DAEMONS:
            # -D: in the foreground of a session of its own, so its pid is the one we keep;
            # -c (slurmctld): no state from an earlier cluster in this directory.
            args = [daemon, "-D", "-f", str(cluster.conf), *(["-c"] if daemon == "slurmctld"
                                                             else [])]
            with open(cluster.root / f"{daemon}.out", "ab") as out:
                process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            started[daemon] = process.pid
            (cluster.root / DAEMONS_FILE).write_text(json.dumps(started))
        _wait_idle(cluster, started, timeout_s)
    except BaseException:
        _kill(started)
        (cluster.root / DAEMONS_FILE).unlink(missing_ok=True)
        raise
    return cluster


def _wait_idle(cluster: Cluster, started: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        dead = [d for d in DAEMONS if not _alive({d: started[d]})]
        if dead:
            log = cluster.root / f"{dead[0]}.log"
            raise ClusterError(f"{dead[0]} exited at start: {_last_log_line(log)} ({log})")
        # the node's state, and why it is not usable (`Low RealMemory ...`) if it is not
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t %E"], env=cluster.env,
                              capture_output=True, text=True)
        state = done.stdout.strip()
        if done.returncode == 0 and state.split()[:1] == ["idle"]:
            return
        time.sleep(0.2)
    raise ClusterError(f"the node is not idle {timeout_s:.0f}s after start (sinfo: "
                       f"{state or 'no answer'}; logs: {cluster.root}/slurm*.log)")


def _last_log_line(path: Path) -> str:
    try:
        return _last_line(path.read_text(errors="replace"))
    except OSError:
        return "no log"


def _daemons(root: Path) -> dict[str, int]:
    try:
        return {name: int(pid) for name, pid in
                json.loads((root / DAEMONS_FILE).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _alive(daemons: dict[str, int]) -> bool:
    """Whether any of `daemons` is still running (a zombie of ours counts as ended)."""
    for pid in daemons.values():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            return True
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                return True
        except ChildProcessError:  # not our child: alive, as kill(0) said
            return True
    return False


def _kill(daemons: dict[str, int], grace_s: float = 10) -> None:
    """SIGTERM each of `daemons` (slurmd first, munged last), SIGKILL what is left."""
    order = ["slurmd", "slurmctld", "munged"]
    for name in sorted(daemons, key=lambda n: order.index(n) if n in order else -1):
        pid = daemons[name]
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + grace_s
        while _alive({name: pid}) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive({name: pid}):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)


def stop(root: Path, grace_s: float = 35) -> bool:
    """Cancel the cluster's jobs, wait up to `grace_s` for them to end (their runs checkpoint
    on SIGTERM), then stop the daemons `start` started in `root`. False if none ran."""
    root = root.resolve()
    daemons = _daemons(root)
    if not _alive(daemons):
        (root / DAEMONS_FILE).unlink(missing_ok=True)
        return False
    cluster = Cluster(root)
    deadline = time.monotonic() + grace_s
    while cluster.conf.exists() and time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i"], env=cluster.env,
                               capture_output=True, text=True)
        jobs = queue.stdout.split()
        if queue.returncode != 0 or not jobs:
            break
        subprocess.run(["scancel", *jobs], env=cluster.env, capture_output=True)
        time.sleep(0.5)
    _kill(daemons)
    (root / DAEMONS_FILE).unlink(missing_ok=True)
    return True


def usage(cluster: Cluster) -> str:
    """How to use the running cluster from a shell, and how to stop it."""
    return f"""A local Slurm cluster is up: partition {cluster.partition}, one node.
Its slurm.conf, state and logs: {cluster.root}. Use it from this shell:
  export SLURM_CONF={cluster.conf}
  sinfo
  .venv/bin/scaling-train --config-dir sweeps --config-name demo hydra/launcher=slurm \\
      hydra.launcher.partition={cluster.partition} hydra.launcher.gpus_per_node=0 \\
      hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2
  .venv/bin/scaling-report runs/demo
Stop it (cancelling its jobs): make slurm-down. More: docs/slurm.md."""


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m scaling.slurm_local {install,up,down} [--dir DIR]`."""
    parser = ArgumentParser(prog="slurm_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["install", "up", "down"])
    parser.add_argument("--dir", type=Path, default=default_dir(),
                        help="the cluster's directory (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
        if args.action == "install":
            install()
        elif args.action == "up":
            print(usage(start(args.dir)))
        elif not stop(args.dir):
            print(f"no local cluster was running in {args.dir}")
    except Exception as error:
        sys.exit(exit_status(error, parser.prog))


if __name__ == "__main__":
    main()
