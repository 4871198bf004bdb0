"""Rules `<experiment>_across`: see laminae.stages.across."""
from pathlib import Path

from laminae.stages.across import run_across
from laminae.stages.runner import run_stage


def main(smk, ctx):
    run_across(ctx.experiment(smk.params.experiment), ctx.stage, list(smk.input.stores),
               Path(smk.output.config).parent.parent)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
