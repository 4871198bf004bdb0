"""Rule `extract_shard`: one shard of a corpus extraction (see laminae.shards)."""
from pathlib import Path

import torch

from laminae.shards import parse_shard_name
from laminae.stages.extract import extract
from laminae.stages.runner import run_stage


def main(smk, ctx):
    torch.set_num_threads(smk.threads)
    output = Path(smk.output[0])
    extract(ctx.stage, ctx.runtime, output, ctx.root, ctx.registry(), shard=parse_shard_name(output.name))


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
