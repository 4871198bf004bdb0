"""Rule `extract`: see laminae.stages.extract."""
from pathlib import Path

import torch

from laminae.stages.extract import extract
from laminae.stages.runner import run_stage


def main(smk, ctx):
    torch.set_num_threads(smk.threads)
    extract(ctx.stage, ctx.runtime, Path(smk.output[0]), ctx.root, ctx.registry())


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
