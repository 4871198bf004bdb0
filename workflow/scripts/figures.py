"""Rules `<experiment>_figures`: see laminae.stages.figures."""
from pathlib import Path

from laminae.stages.figures import run_figures
from laminae.stages.runner import run_stage


def main(smk, ctx):
    run_figures(ctx.experiment(smk.params.experiment), ctx.stage, ctx.context, Path(smk.input.metrics[0]).parent,
                Path(smk.output.config).parent)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
