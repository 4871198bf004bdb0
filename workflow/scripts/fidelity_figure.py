"""Rule `fidelity_figure`: see laminae.stages.fidelity."""
from pathlib import Path

from laminae.stages.fidelity import draw_fidelity
from laminae.stages.runner import run_stage


def main(smk, ctx):
    subtitle = f"{ctx.stage.config['model']['name']}, {ctx.stage.inputs} {smk.wildcards.label} (store {smk.wildcards.xh})"
    draw_fidelity(Path(smk.input.activations), Path(smk.output.png), subtitle)


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
