"""Rule `adjustment_metrics`: see laminae.analysis.adjustments."""
from pathlib import Path

from laminae.analysis.adjustments import run_adjustment_metrics
from laminae.stage_runner import run_stage


def main(smk, ctx):
    run_adjustment_metrics(ctx.stage, Path(smk.input.activations), Path(smk.output.table).parent, ctx.runtime)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
