"""Rule `random_model`: see laminae.models.random_models."""
from pathlib import Path

from laminae.models.random_models import build_random_model
from laminae.stages.runner import run_stage

run_stage(snakemake, lambda smk, ctx: build_random_model(ctx.stage.random_init, Path(smk.output[0])))  # noqa: F821
