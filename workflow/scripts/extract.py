"""Rule `extract`: see laminae.extract."""
from pathlib import Path

import torch

from laminae.extract import extract
from laminae.stage_runner import run_stage


def main(smk, ctx):
    torch.set_num_threads(smk.threads)
    extract(ctx.stage, ctx.runtime, Path(smk.output[0]), ctx.root)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
