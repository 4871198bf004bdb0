"""Rule `gather`: see laminae.stages.gather."""
from pathlib import Path

from laminae.stages.gather import gather
from laminae.stages.runner import run_stage


def main(smk, ctx):
    gather(ctx.stage, ctx.runtime, [Path(folder) for folder in smk.input.shards], Path(smk.output[0]), ctx.registry())


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
