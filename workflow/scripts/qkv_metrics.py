"""Rule `qkv_metrics`: see laminae.analysis.qkv_stage."""
from pathlib import Path

from laminae.analysis.qkv_stage import run_qkv_metrics
from laminae.stage_runner import run_stage


def main(smk, ctx):
    run_qkv_metrics(ctx.stage, Path(smk.input.activations), Path(smk.output.table).parent, ctx.runtime)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
