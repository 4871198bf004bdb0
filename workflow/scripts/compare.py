"""Rule `compare`: see laminae.plots.compare."""
from pathlib import Path

from laminae.plots.compare import make_comparison
from laminae.stage_runner import run_stage

run_stage(snakemake, lambda smk, ctx: make_comparison(ctx.stage, list(smk.input.tables), Path(smk.output.png)))  # noqa: F821
