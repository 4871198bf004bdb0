"""Rules `<experiment>_claims`: see laminae.stages.claims."""
from pathlib import Path

from laminae.stages.claims import run_claims
from laminae.stages.runner import run_stage


def main(smk, ctx):
    run_claims(ctx.experiment(smk.params.experiment), ctx.stage, ctx.context, Path(smk.input.metrics[0]).parent,
               Path(smk.output.config).parent)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
