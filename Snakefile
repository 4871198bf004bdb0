# laminae: layer-by-layer analysis of transformer language models.
#
#   snakemake --cores 2                                            # defaults (GPT-2 Large)
#   snakemake --cores 2 --config 'overrides=["model=minilm-l6"]'   # Hydra overrides
#   snakemake --cores 2 --config 'sweep=["model=tiny-gpt2,minilm-l6"]'
#
# The config is composed with Hydra (conf/), validated, and split into per-stage configs whose
# hashes name the output folders (see docs/ARCHITECTURE.md). Composition is deterministic, so
# every cluster job that re-parses this file derives the same stages. The rules are generic:
# one extraction per set of inputs (or its shards and their gather), and one analysis, figure,
# claims and compare rule per experiment; a sweep adds the claims matrix.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.20")

PROJECT_ROOT = Path(workflow.basedir).resolve()
sys.path.insert(0, str(PROJECT_ROOT / "src"))

from laminae.errors import LaminaeError
from laminae.workflow import WorkflowPlan, export_source_path

export_source_path(PROJECT_ROOT)  # jobs (conda envs, cluster nodes) import laminae from src/ too

JOB = workflow.remote_exec or workflow.subprocess_exec   # a job of a DAG built by another process

try:
    # a job (on a cluster node) plans again: with the stores the DAG chose (laminae.config.reuse)
    PLAN = WorkflowPlan.from_snakemake_config(config, PROJECT_ROOT, job=JOB)
except LaminaeError as error:
    print(f"laminae: {error}", file=sys.stderr)
    sys.exit(1)
PLAN.inject_into(config)

RESULTS = PLAN.results_dir


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    label=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    inputs=r"[a-z]+",
    xh=r"[0-9a-f]{10}",
    ah=r"[0-9a-f]{10}",
    ph=r"[0-9a-f]{10}",
    ch=r"[0-9a-f]{10}",
    kh=r"[0-9a-f]{10}",
    shard=r"shard-[0-9]+-of-[0-9]+-b[0-9]+",


include: "workflow/rules/extract.smk"
include: "workflow/rules/experiments.smk"
include: "workflow/rules/claims.smk"


# A job is given its target (--target-jobs), never `all`: it skips listing every file of the sweep.
rule all:
    default_target: True
    input:
        [] if JOB else PLAN.targets(),


onstart:
    for note in [*PLAN.notes, *PLAN.identical_weights()]:
        print(f"laminae: {note}", file=sys.stderr)
    try:
        PLAN.preflight(local=workflow.local_exec)
    except LaminaeError as error:
        print(f"laminae: {error}", file=sys.stderr)
        sys.exit(1)


onsuccess:
    from laminae.api.summary import end_of_run

    print(end_of_run(PLAN, config.get("overrides"), config.get("sweep")), file=sys.stderr)
