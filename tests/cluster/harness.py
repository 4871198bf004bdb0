"""laminae's test cluster: start.sh / stop.sh of this folder, driven from Python.

    >>> cluster = LocalSlurm()
    >>> cluster.start()          # pytest.skip(<one line>) where no cluster can be had
    >>> cluster.cpus()           # cores of the node
    >>> cluster.stop()           # exactly the recorded PIDs, only if this process started them

`start` uses a cluster that is already up when this harness's PID files name five live daemons
and `sinfo` answers (left running afterwards); otherwise it runs start.sh, which needs root and
Debian's SLURM packages (installed with apt-get when missing). It skips, with the reason in one
line, where that cannot work: not root, no packages and no apt-get, apt-get failing (offline),
or another SLURM controller already answering on this machine (its slurm.conf is not ours).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("LAMINAE_SLURM_STATE", "/tmp/laminae-slurm"))
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
ACCOUNT, PARTITION = "research", "debug"   # made by start.sh
SKIPPED = 2                                 # start.sh's exit status when the packages cannot be had


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (nothing may reap daemons reparented to PID 1)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _answers(command: list[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class LocalSlurm:
    """The cluster of start.sh / stop.sh and the daemon PIDs they record under STATE/pids."""

    def __init__(self, state: Path = STATE) -> None:
        self.state = state
        self.owned = False          # started by this process (so it stops it)
        self.pids: dict[str, int] = {}
        self.stop_output = ""

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LAMINAE_SLURM_STATE": str(self.state), "ACCT": "slurmdbd", "FAKE_GPU": "1"}

    def recorded(self) -> dict[str, int]:
        pids = {}
        for name in DAEMONS:
            path = self.state / "pids" / f"{name}.pid"
            if path.is_file() and path.read_text().strip().isdigit():
                pids[name] = int(path.read_text())
        return pids

    def start(self) -> None:
        running = {name: pid for name, pid in self.recorded().items() if alive(pid)}
        if set(running) == set(DAEMONS) and _answers(["sinfo"]):
            self.pids = running   # this harness's cluster is up (another test session): use it, leave it
            return
        if os.geteuid() != 0:
            pytest.skip(f"the SLURM test cluster (tests/cluster/start.sh) needs root to install and start SLURM; "
                        f"this is uid {os.geteuid()}")
        if _answers(["scontrol", "ping"]):
            pytest.skip("another SLURM controller already answers on this machine; tests/cluster/start.sh would "
                        "replace its slurm.conf")
        self.owned = True   # from here on stop.sh runs, whatever happens
        result = subprocess.run([str(HERE / "start.sh")], capture_output=True, text=True, timeout=900, env=self.env)
        output = (result.stdout + result.stderr)[-3000:]
        if result.returncode != 0:
            self.stop()
            if result.returncode == SKIPPED:
                pytest.skip(f"no SLURM for the test cluster: {output.strip().splitlines()[-1]}")
            pytest.fail(f"tests/cluster/start.sh failed ({result.returncode}):\n{output}")
        self.pids = self.recorded()
        assert set(self.pids) == set(DAEMONS), f"start.sh recorded {self.pids}:\n{output}"

    def cpus(self) -> int:
        """CPUs of the node (start.sh gives it $(nproc))."""
        return int(subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.split()[0])

    def stop(self) -> None:
        """stop.sh: exactly the recorded PIDs (and their children); a no-op unless owned."""
        if not self.owned:
            return
        if shutil.which("scancel") and self.pids.get("slurmctld") and alive(self.pids["slurmctld"]):
            subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=30)  # a run that timed out
        result = subprocess.run([str(HERE / "stop.sh")], capture_output=True, text=True, timeout=120, env=self.env)
        self.stop_output += result.stdout + result.stderr
        self.owned = False
