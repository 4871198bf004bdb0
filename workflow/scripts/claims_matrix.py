"""Rule `claims_matrix`: see laminae.stages.claims."""
from pathlib import Path

from laminae.stages.claims import run_claims_matrix
from laminae.stages.runner import run_stage


def main(smk, ctx):
    run_claims_matrix(ctx.stage, list(smk.input.tables), Path(smk.output.png))


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
