"""Rules `<experiment>_analysis`: see laminae.stages.analysis."""
from pathlib import Path

from laminae.stages.analysis import run_analysis
from laminae.stages.runner import run_stage


def main(smk, ctx):
    run_analysis(ctx.experiment(smk.params.experiment), ctx.stage, Path(smk.input.activations),
                 Path(smk.output.config).parent, ctx.runtime)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
