"""Rule `extract`: see laminae.stages.extract; with corpus.shards > 1, the gather of
laminae.shards (its inputs are then the shards' folders)."""
from pathlib import Path

from laminae.stages.runner import run_stage


def main(smk, ctx):
    if "shards" in smk.input.keys():
        from laminae.shards import gather

        gather(ctx.stage, ctx.runtime, [Path(folder) for folder in smk.input.shards], Path(smk.output[0]),
               ctx.registry())
        return
    import torch

    from laminae.stages.extract import extract

    torch.set_num_threads(smk.threads)
    extract(ctx.stage, ctx.runtime, Path(smk.output[0]), ctx.root, ctx.registry())


run_stage(snakemake, main)  # noqa: F821 (injected by Snakemake)
