"""Rule `qkv_figures`: see laminae.plots.qkv."""
from pathlib import Path

from laminae.plots.qkv import make_qkv_figures
from laminae.stage_runner import run_stage


def main(smk, ctx):
    make_qkv_figures(ctx.stage, ctx.context, smk.input.table, smk.input.similarity, Path(smk.output.config).parent)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
