"""Rules `<experiment>_training`: see laminae.stages.compare.run_training."""
from pathlib import Path

from laminae.stages.compare import run_training
from laminae.stages.runner import run_stage


def main(smk, ctx):
    run_training(ctx.experiment(smk.params.experiment), ctx.stage, [Path(p).parent for p in smk.input.metrics],
                 Path(smk.output.png))


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
