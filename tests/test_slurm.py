"""A sharded extraction on a real SLURM cluster through profiles/slurm/, against a local run.

The cluster is the project's own (tests/cluster: start.sh / stop.sh, driven by harness.py): a
single-node SLURM 22.05 from Debian's packages with one fake GPU and accounting in MariaDB (so
`sacct` works), started for this module and always stopped by the PIDs it recorded. The module
is skipped, with the reason in one line, where that cluster cannot be had: not root, SLURM's
packages neither installed nor installable, or another SLURM controller already running.

What is checked, for model=tiny-gpt2 and experiment 2 on a corpus of ~48 windows (the seed's
passage four times, 32-token windows, batches of 3): the SLURM run splits the extraction into 4
shard jobs (corpus.shards=4) and gathers them; the local run is one extraction job.
- each shard job asked for a GPU (`sacct` ReqTRES gres/gpu=1) and got one (AllocTRES); the
  gather, metric, figure and claims jobs asked for CPUs and memory only; every job's memory and
  time limit are the ones WorkflowPlan computes for it;
- the sharded store equals the single job's: rows.tsv byte for byte, every stored activation
  bit for bit (through the gathered HDF5 virtual datasets), every per-token value of the metrics
  files identical, every table value within 1e-12 relative, every stage record the same but
  for `runtime.shards`, the same figures and files;
- the jobs, which re-parse the Snakefile on the node, derived the same stage hashes;
- the cluster is stopped by PID afterwards.

Run alone: .venv/bin/python -m pytest tests/test_slurm.py -q -s   (about 2 minutes)
"""

from __future__ import annotations

import datetime
import math
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from cluster.harness import ACCOUNT, DAEMONS, PARTITION, LocalSlurm, alive
from laminae.store import ActivationStore, read_tsv
from laminae.workflow import WorkflowPlan
from workflow_helpers import PROJECT_ROOT, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SHARDS = 4
CLUSTER_RULES = {"extract_shard": SHARDS, "gather": 1, "adjustments_analysis": 1, "adjustments_figures": 1,
                 "adjustments_claims": 1}
RTOL = 1e-12


def overrides(corpus: Path) -> list[str]:
    """One experiment keeps the cluster run short; 32-token windows make many of them."""
    return ["model=tiny-gpt2", "experiments=[adjustments]", f"corpus.path={corpus}", "corpus.window_tokens=32",
            "batch_size=3"]


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
    profile["seconds-between-status-checks"] = 3
    # one thread per shard job, so that two run at once on a 2-core node (the local run's single
    # extraction job gets one thread too: the same arithmetic)
    profile["set-threads"] = {"extract_shard": 1}
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
    """The pipeline through SLURM with 4 shards and, at the same time, locally in one job."""
    base = tmp_path_factory.mktemp("slurm")
    corpus = base / "corpus"
    corpus.mkdir()
    (corpus / "passage.txt").write_text("\n\n".join([(PROJECT_ROOT / "data" / "corpora" / "nietzsche.txt").read_text(
        encoding="utf-8").strip()] * 4), encoding="utf-8")
    cpus = cluster.cpus()
    profile = _derived_profile(base / "profile", cpus)
    started = datetime.datetime.now() - datetime.timedelta(seconds=5)
    clock = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        on_slurm = pool.submit(snakemake, base / "slurm", [*overrides(corpus), f"corpus.shards={SHARDS}"], "--profile",
                               str(profile), timeout=600, real_scontrol=True)
        local = pool.submit(snakemake, base / "local", overrides(corpus), "--profile",
                            str(PROJECT_ROOT / "profiles" / "local"), "--set-threads", "extract=1")
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
        wildcards = (rule.group(2) or "").split("_")   # ..._<stage hash>, or ..._<hash>_<shard> for a shard
        digest = wildcards[-2] if rule.group(1) == "extract_shard" else wildcards[-1]
        jobs.append({"id": int(job_id), "rule": rule.group(1), "digest": digest,
                     "req": _tres(req), "alloc": _tres(alloc), "minutes": _minutes(limit), "state": state})
    print(f"\nSLURM ({SHARDS} shards) and local runs took {elapsed:.0f} s together; {len(jobs)} SLURM jobs")
    return {"slurm": base / "slurm", "local": base / "local", "jobs": jobs, "submitted": submitted,
            "output": output, "cpus": cpus, "overrides": overrides(corpus)}


def _plan(runs) -> WorkflowPlan:
    return WorkflowPlan.from_snakemake_config({"overrides": [*runs["overrides"], f"corpus.shards={SHARDS}"]},
                                              PROJECT_ROOT)


def test_shard_jobs_request_a_gpu_and_the_others_do_not(runs):
    jobs = runs["jobs"]
    assert {job["id"] for job in jobs} == runs["submitted"], runs["output"][-3000:]
    assert {rule: sum(job["rule"] == rule for job in jobs) for rule in CLUSTER_RULES} == CLUSTER_RULES, jobs
    assert len(jobs) == sum(CLUSTER_RULES.values()), "random_model is a local rule; nothing else is submitted"
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        if job["rule"] == "extract_shard":
            assert job["req"].get("gres/gpu") == "1" and job["alloc"].get("gres/gpu") == "1", job
            assert job["req"]["cpu"] == "1", job   # the profile's set-threads (the rule asks for 4)
        else:
            assert not any(key.startswith("gres/") for key in job["req"]), job
            assert job["req"]["cpu"] == "1", job


def test_memory_and_time_requests_are_the_workflow_plans(runs):
    plan = _plan(runs)
    for job in runs["jobs"]:
        stage = plan.stages[job["digest"]]
        assert stage.kind == {"gather": "extract", "extract_shard": "extract", "adjustments_analysis": "analysis",
                              "adjustments_claims": "claims"}.get(job["rule"], "plot"), job
        wanted = {"extract_shard": plan.shard_resources, "gather": plan.gather_resources}.get(
            job["rule"], plan.resources)(job["digest"])
        assert job["req"]["mem"] == f"{wanted['mem_mb']}M" and job["minutes"] == wanted["runtime"], (job, wanted)
        if job["rule"] == "extract_shard":
            assert plan.wants_gpu(job["digest"]) == 1


def test_jobs_on_the_nodes_derived_the_same_stage_hashes(runs):
    """Each job re-parsed the Snakefile; the stage record it wrote names its folder's hash."""
    plan = _plan(runs)
    records = sorted(runs["slurm"].glob("results/**/config.yaml"))
    # the store, its 4 shards, the analysis, its figures and claims
    assert len(records) == len(plan.stages) + SHARDS == 4 + SHARDS
    for path in records:
        record = yaml.safe_load(path.read_text())
        folder = path.parent.parent if path.parent.parent.name != "shards" else path.parent.parent.parent
        assert record["hash"] in plan.stages and folder.name.endswith(record["hash"]), path
        assert record["config"] == plan.stages[record["hash"]].config


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and ".snakemake" not in p.parts and "shards" not in p.parts}


def _number(text: str) -> float | str:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return text


def _tables_equal(a: Path, b: Path) -> int:
    rows_a, rows_b = read_tsv(a), read_tsv(b)
    assert len(rows_a) == len(rows_b) and list(rows_a[0]) == list(rows_b[0]), a
    compared = 0
    for x_row, y_row in zip(rows_a, rows_b):
        for key, x in x_row.items():
            x, y = _number(x), _number(y_row[key])
            if isinstance(x, float) and isinstance(y, float):
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=RTOL, abs_tol=0), (a, key, x, y)
                compared += 1
            else:
                assert x == y, (a, key)
    return compared


def _datasets_equal(a: Path, b: Path) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b, a
        for name in names_a:
            if isinstance(fa[name], h5py.Dataset):
                assert fa[name].dtype == fb[name].dtype and np.array_equal(fa[name][()], fb[name][()], equal_nan=True), (a, name)
        for key in set(fa.attrs) | set(fb.attrs):
            if key not in ("runtime_shards", "shards"):
                assert np.array_equal(fa.attrs.get(key), fb.attrs.get(key)), (a, key)


def _without_shards(record: dict) -> dict:
    record.get("runtime", {}).pop("shards", None)
    return record


def test_four_shards_on_slurm_equal_one_local_job(runs):
    slurm, local = runs["slurm"], runs["local"]
    files = _files(local)
    assert _files(slurm) == files
    (activations,) = {Path(f).parent for f in files if f.endswith("activations/rows.tsv")}
    assert (slurm / activations / "rows.tsv").read_bytes() == (local / activations / "rows.tsv").read_bytes()
    store, sharded = ActivationStore(local / activations), ActivationStore(slurm / activations)
    assert len(set(store.rows.integers("window"))) >= 40 and sharded.n_rows == store.n_rows
    for site in store.sites:
        assert np.array_equal(sharded.read(site, dtype=np.float32), store.read(site, dtype=np.float32)), site
    compared = 0
    for name in sorted(files):
        a, b = local / name, slurm / name
        if name.endswith(".tsv") and not name.endswith("rows.tsv"):
            compared += _tables_equal(a, b)
        elif name.endswith(".h5"):
            _datasets_equal(a, b)
        elif name.endswith(".yaml"):
            assert _without_shards(yaml.safe_load(a.read_text())) == _without_shards(yaml.safe_load(b.read_text())), name
        else:   # figures, summaries, logs, Snakemake's timestamps: there in both, empty in neither or both
            assert (a.stat().st_size > 0) == (b.stat().st_size > 0), name
    assert compared > 100


def test_the_cluster_is_stopped_by_pid(cluster, runs):
    if not cluster.owned:
        pytest.skip("the SLURM test cluster was already running before this module; it is left running")
    pids = dict(cluster.pids)
    cluster.stop()  # the finalizer's stop then does nothing
    assert set(pids) == set(DAEMONS)
    assert not cluster.recorded(), f"PID files left: {cluster.recorded()}\n{cluster.stop_output}"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if alive(pid)], cluster.stop_output
