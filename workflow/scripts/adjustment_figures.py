"""Rule `adjustment_figures`: see laminae.plots.adjustments."""
from pathlib import Path

from laminae.plots.adjustments import make_adjustment_figures
from laminae.stage_runner import run_stage


def main(smk, ctx):
    make_adjustment_figures(ctx.stage, ctx.context, Path(smk.input.table), Path(smk.input.cosine),
                            Path(smk.output.config).parent, ctx.runtime)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
