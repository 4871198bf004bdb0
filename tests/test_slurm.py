"""The whole pipeline on a real SLURM cluster through profiles/slurm/, against a local run.

The cluster is the single-node SLURM 22.05 of ../shared/tools/slurm-local (one fake GPU,
accounting in MariaDB so `sacct` works), started by its start.sh for this module and always
stopped by PID with its stop.sh. The test is skipped, with the reason, only where that cluster
cannot be started: start.sh missing, not root, or SLURM's Debian packages not installable.

What is checked, for model=tiny-gpt2 with small permutation/bootstrap counts:
- the extraction jobs were submitted with a GPU request (`sacct` ReqTRES gres/gpu=1) and got
  one (AllocTRES), and the metric and figure jobs asked for CPUs and memory only; every job's
  memory and time limit are the ones WorkflowPlan computes for its stage;
- every output file equals the local run's byte for byte: HDF5 (datasets and all attributes,
  provenance included), TSV, YAML, PNG, PDF, the random model's safetensors. Nothing
  legitimately differs: the runtime settings recorded in the outputs are the config's (device
  `auto`, not the device found), versions are the same environment's, and figures are saved
  without dates. Only the rule logs differ (timestamps), and Snakemake's own .snakemake/;
- the jobs, which re-parse the Snakefile on the node, derived the same stage hashes;
- the cluster is stopped by PID afterwards.

Run alone: .venv/bin/python -m pytest tests/test_slurm.py -q -s   (about 2 minutes)
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from laminae.workflow import WorkflowPlan
from workflow_helpers import FAST, PROJECT_ROOT, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

OVERRIDES = ["model=tiny-gpt2", "experiments=[adjustments]", *FAST]   # one experiment keeps the cluster run short
SLURM_LOCAL = PROJECT_ROOT.parent / "shared" / "tools" / "slurm-local"
STATE = Path(os.environ.get("SLURM_LOCAL_STATE", "/tmp/slurm-local"))
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
ACCOUNT, PARTITION = "research", "debug"  # made by start.sh
EXTRACT_THREADS = 4                       # threads: of rule extract
CLUSTER_RULES = {"extract": 1, "adjustments_analysis": 1, "adjustments_figures": 1, "adjustments_claims": 1}


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (nothing may reap daemons reparented to PID 1)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _packages_installed() -> bool:
    return subprocess.run(["dpkg", "-s", *PACKAGES], capture_output=True).returncode == 0


class LocalSlurm:
    """start.sh / stop.sh, and the daemon PIDs they record under $SLURM_LOCAL_STATE/pids."""

    def __init__(self) -> None:
        self.owned = False          # started by this module (so it stops it)
        self.pids: dict[str, int] = {}
        self.stop_output = ""

    @staticmethod
    def recorded() -> dict[str, int]:
        pids = {}
        for name in DAEMONS:
            path = STATE / "pids" / f"{name}.pid"
            if path.is_file() and path.read_text().strip().isdigit():
                pids[name] = int(path.read_text())
        return pids

    def start(self) -> None:
        running = {name: pid for name, pid in self.recorded().items() if _alive(pid)}
        if set(running) == set(DAEMONS) and subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0:
            self.pids = running  # someone's cluster is up: use it, leave it running
            return
        script = SLURM_LOCAL / "start.sh"
        if not script.is_file():
            pytest.skip(f"{script} not found: the SLURM test needs the local cluster of ../shared/tools/slurm-local "
                        "beside the repository")
        if os.geteuid() != 0:
            pytest.skip(f"{script} must run as root (it installs SLURM's Debian packages and starts munged, "
                        f"slurmctld and slurmd); this is uid {os.geteuid()}")
        if not _packages_installed() and shutil.which("apt-get") is None:
            pytest.skip(f"SLURM's packages ({', '.join(PACKAGES)}) are not installed and there is no apt-get "
                        "to install them")
        self.owned = True  # from here on stop.sh runs, whatever happens
        env = {**os.environ, "ACCT": "slurmdbd", "FAKE_GPU": "1", "SLURM_LOCAL_STATE": str(STATE)}
        result = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, env=env)
        output = (result.stdout + result.stderr)[-3000:]
        if result.returncode != 0:
            self.stop()
            if not _packages_installed():
                pytest.skip(f"SLURM's packages could not be installed (start.sh exit {result.returncode}), so sbatch "
                            f"cannot be started:\n{output}")
            pytest.fail(f"start.sh failed ({result.returncode}) with SLURM installed:\n{output}")
        self.pids = self.recorded()
        assert set(self.pids) == set(DAEMONS), f"start.sh recorded {self.pids}:\n{output}"

    def cpus(self) -> int:
        """CPUs of the node (start.sh gives it $(nproc))."""
        return int(subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.split()[0])

    def stop(self) -> None:
        """stop.sh: kills exactly the recorded PIDs (and their children) and removes the files."""
        if not self.owned:
            return
        if shutil.which("scancel") and self.pids.get("slurmctld") and _alive(self.pids["slurmctld"]):
            subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=30)  # a run that timed out
        result = subprocess.run([str(SLURM_LOCAL / "stop.sh")], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "SLURM_LOCAL_STATE": str(STATE)})
        self.stop_output += result.stdout + result.stderr
        self.owned = False


@pytest.fixture(scope="module")
def cluster():
    slurm = LocalSlurm()
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


def _derived_profile(folder: Path, cpus: int) -> Path:
    """profiles/slurm/config.yaml plus this cluster's settings: account and partition (added to
    default-resources, which the command line could only replace), a node of `cpus` cores, a
    quick first status check, and the SLURM logs of successful jobs kept for a failure report."""
    profile = yaml.safe_load((PROJECT_ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    defaults = profile.get("default-resources") or {}
    if isinstance(defaults, list):
        defaults = dict(item.split("=", 1) for item in defaults)
    profile["default-resources"] = {**defaults, "slurm_account": ACCOUNT, "slurm_partition": PARTITION}
    profile["max-threads"] = cpus
    profile["slurm-init-seconds-before-status-checks"] = 5
    profile["slurm-keep-successful-logs"] = True
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def _tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    hours, minutes, seconds = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The pipeline through SLURM and, at the same time, locally (profiles/local)."""
    base = tmp_path_factory.mktemp("slurm")
    cpus = cluster.cpus()
    profile = _derived_profile(base / "profile", cpus)
    started = datetime.datetime.now() - datetime.timedelta(seconds=5)
    clock = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        on_slurm = pool.submit(snakemake, base / "slurm", OVERRIDES, "--profile", str(profile), timeout=600,
                               real_scontrol=True)
        local = pool.submit(snakemake, base / "local", OVERRIDES, "--profile", str(PROJECT_ROOT / "profiles" / "local"))
        slurm_result = on_slurm.result()
        local.result()  # raises if the local run failed
    elapsed = time.monotonic() - clock
    output = slurm_result.stdout + slurm_result.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    submitted = {int(j) for j in re.findall(r"has been submitted with SLURM jobid (\d+)", output)}
    sacct = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", run_id, "-S", started.strftime("%Y-%m-%dT%H:%M:%S"),
         "--format=JobID,Comment,ReqTRES,AllocTRES,Timelimit,State"],
        capture_output=True, text=True, timeout=60, check=True)
    jobs = []
    for line in sacct.stdout.splitlines():
        job_id, comment, req, alloc, limit, state = line.split("|")
        rule = re.match(r"rule_(.+?)(?:_wildcards_(.*))?$", comment)
        jobs.append({"id": int(job_id), "rule": rule.group(1), "digest": (rule.group(2) or "").rsplit("_", 1)[-1],
                     "req": _tres(req), "alloc": _tres(alloc), "minutes": _minutes(limit), "state": state})
    print(f"\nSLURM and local runs took {elapsed:.0f} s together; {len(jobs)} SLURM jobs")
    return {"slurm": base / "slurm", "local": base / "local", "jobs": jobs, "submitted": submitted,
            "output": output, "cpus": cpus}


def test_extraction_jobs_request_a_gpu_and_the_analysis_jobs_do_not(runs):
    jobs = runs["jobs"]
    assert {job["id"] for job in jobs} == runs["submitted"], runs["output"][-3000:]
    assert {rule: sum(job["rule"] == rule for job in jobs) for rule in CLUSTER_RULES} == CLUSTER_RULES, jobs
    assert len(jobs) == sum(CLUSTER_RULES.values()), "random_model is a local rule; nothing else is submitted"
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        if job["rule"] == "extract":
            assert job["req"].get("gres/gpu") == "1" and job["alloc"].get("gres/gpu") == "1", job
            assert job["req"]["cpu"] == str(min(EXTRACT_THREADS, runs["cpus"])), job
        else:
            assert not any(key.startswith("gres/") for key in job["req"]), job
            assert job["req"]["cpu"] == "1", job


def test_memory_and_time_requests_are_the_workflow_plans(runs):
    plan = WorkflowPlan.from_snakemake_config({"overrides": OVERRIDES}, PROJECT_ROOT)
    for job in runs["jobs"]:
        stage = plan.stages[job["digest"]]
        assert stage.kind == {"extract": "extract", "adjustments_analysis": "analysis",
                              "adjustments_claims": "claims"}.get(job["rule"], "plot"), job
        wanted = plan.resources(job["digest"])
        assert job["req"]["mem"] == f"{wanted['mem_mb']}M" and job["minutes"] == wanted["runtime"], (job, wanted)
        if stage.kind == "extract":
            assert plan.wants_gpu(job["digest"]) == 1


def test_jobs_on_the_nodes_derived_the_same_stage_hashes(runs):
    """Each job re-parsed the Snakefile; the stage record it wrote names its folder's hash."""
    plan = WorkflowPlan.from_snakemake_config({"overrides": OVERRIDES}, PROJECT_ROOT)
    records = sorted(runs["slurm"].glob("results/**/config.yaml"))
    assert len(records) == len(plan.stages) == 4   # the extraction, the analysis, its figures and claims
    for path in records:
        record = yaml.safe_load(path.read_text())
        assert record["hash"] in plan.stages and path.parent.parent.name.endswith(record["hash"]), path
        assert record["config"] == plan.stages[record["hash"]].config


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".snakemake" not in p.parts}


def _h5_differences(a: Path, b: Path) -> list[str]:
    """What differs between two HDF5 files: datasets (shape, dtype, values) and attributes."""
    out = []
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = set(), set()
        fa.visit(names_a.add)
        fb.visit(names_b.add)
        out += [f"only in one: {n}" for n in sorted(names_a ^ names_b)]
        for name in ["", *sorted(names_a & names_b)]:
            x, y = (fa, fb) if name == "" else (fa[name], fb[name])
            for key in sorted(set(x.attrs) | set(y.attrs)):
                if key not in x.attrs or key not in y.attrs or not np.array_equal(x.attrs[key], y.attrs[key]):
                    out.append(f"{name or '/'} attribute {key}: {x.attrs.get(key)!r} != {y.attrs.get(key)!r}")
            if isinstance(x, h5py.Dataset) and not (x.dtype == y.dtype and np.array_equal(x[()], y[()], equal_nan=True)):
                out.append(f"dataset {name}: values or dtype differ")
    return out or ["the same datasets and attributes, different bytes (layout)"]


def test_every_output_equals_the_local_runs(runs):
    slurm, local = runs["slurm"], runs["local"]
    files = _files(local)
    assert _files(slurm) == files
    outputs = sorted(f for f in files if not f.endswith(".log"))
    kinds = {Path(f).suffix for f in outputs}
    assert {".h5", ".tsv", ".yaml", ".png", ".pdf", ".safetensors"} <= kinds, kinds
    differing = {}
    for name in outputs:
        if (slurm / name).read_bytes() != (local / name).read_bytes():
            differing[name] = _h5_differences(slurm / name, local / name) if name.endswith(".h5") else ["bytes"]
    assert not differing, differing
    # Rule logs differ by their timestamps; each must be there, non-empty, in both runs.
    for name in files - set(outputs):
        assert (slurm / name).stat().st_size > 0 and (local / name).stat().st_size > 0, name


def test_the_cluster_is_stopped_by_pid(cluster, runs):
    if not cluster.owned:
        pytest.skip("the SLURM cluster was already running before this module; it is left running")
    pids = dict(cluster.pids)
    cluster.stop()  # the finalizer's stop then does nothing
    assert set(pids) == set(DAEMONS)
    assert not LocalSlurm.recorded(), f"PID files left: {LocalSlurm.recorded()}\n{cluster.stop_output}"
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if _alive(pid)], cluster.stop_output
