"""Extraction cost: laminae (hooks + HDF5 writes) against a bare `transformers` forward of the
same model on the same inputs, and against TransformerLens 4.x (`TransformerBridge.run_with_cache`
+ writing the same sites with h5py).

    .venv/bin/python benchmarks/bench_extraction.py                 # both models, 5 rounds (~25 min)
    .venv/bin/python benchmarks/bench_extraction.py --quick         # tiny-gpt2 only, 3 rounds (~1 min)
    .venv/bin/python benchmarks/bench_extraction.py --models gpt2-large-shape --experiments adjustments
    .venv/bin/python benchmarks/bench_extraction.py --models gpt2-large-shape --no-tl --storage-dtype float16

Models: a random GPT-2 with GPT-2 Large's shape (36 blocks, d_model 1280, 20 heads, float32, built
in memory from a fixed seed; ~3.1 GB) and tiny-gpt2 (4 blocks, d_model 64). Inputs: the seeds'
(`qkv`: the 34 prompts of the default stimuli and template, 5 tokens each, q/k/v kept at the
target token; `adjustments`: the Nietzsche corpus, one window of 346 tokens, attn_out, mlp_out,
resid_pre, resid_post kept at every token), batch size 8 as in conf/config.yaml.

The laminae path is the extraction stage (`stimuli.extract` for `qkv`, `corpus.extract` for
`adjustments`) minus model loading and input planning: what `laminae.stages.extract.extract`
runs, with the stage record and runtime settings of the composed config (`--batch-size`,
`--storage-dtype`, `--compression` and `--chunk-rows` are passed to it as the config overrides
`batch_size`, `extract.storage_dtype`, `extract.compression` and `extract.chunk_rows`), i.e.
`run_plan` into an `ActivationWriter`. `--hooks-only` times `run_plan` with a writer that drops
the batches.

Each round runs every path once, in a rotated order; one warm-up round is dropped. Printed: the
median wall time of each path over the rounds, and the median (and min-max) of the per-round
ratios, wall and CPU time. Model building, the TransformerLens bridge's boot and deleting the
written files are not timed. Before timing, the TransformerLens path's stored values are
checked against laminae's (they differ by float round-off only: the bridge forces eager
attention, laminae keeps sdpa).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import (BATCH_SIZE, Scratch, TransformerLensPath, bare_forward, build_model, laminae_extract,
                     max_relative_difference, median, n_params, n_tokens, paired_model_arguments, paired_ratios,
                     paired_rounds, plans, print_header, print_table, read_store, remove_tree, rounds_and_models,
                     seeds_run, setup_torch, spread)

from laminae.stages.extract import run_plan


class _NullWriter:
    """Takes run_plan's batches and drops them: hooks + row selection, no HDF5."""

    def write(self, start, batch):
        pass


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides that give the extraction stage this run's settings."""
    overrides = [f"batch_size={args.batch_size}", f"extract.storage_dtype={args.storage_dtype}",
                 f"extract.chunk_rows={args.chunk_rows}"]
    return overrides + ([f"extract.compression={args.compression}"] if args.compression else [])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paired_model_arguments(parser)
    parser.add_argument("--no-tl", action="store_true", help="skip the TransformerLens path")
    parser.add_argument("--hooks-only", action="store_true",
                        help="also time laminae's hooks and row selection without the HDF5 writer")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--compression", choices=("gzip", "lzf"), default=None)
    parser.add_argument("--chunk-rows", type=int, default=1024)
    args = parser.parse_args(argv)
    repeats, models = rounds_and_models(args)

    setup_torch()
    print_header("bench_extraction: laminae vs bare forward vs TransformerLens", " ".join(["bench_extraction.py", *sys.argv[1:]]))
    inputs = plans(seeds_run(*stage_overrides(args)))
    # the store checked against TransformerLens: float32, uncompressed
    defaults = plans(seeds_run(f"batch_size={args.batch_size}"))
    scratch = Scratch()
    results, ratio_rows = [], []
    try:
        for shape in models:
            loaded = build_model(shape)
            print(f"## {shape}: {n_params(loaded) / 1e6:.0f}M parameters, {loaded.info.n_layers} blocks, "
                  f"d_model {loaded.info.d_model}", flush=True)
            tl = None if args.no_tl else TransformerLensPath(loaded)
            for experiment in args.experiments:
                ex = inputs[experiment]
                plan, sites = ex.plan, ex.sites
                last: list[Path] = []

                def out() -> Path:
                    last.append(scratch.fresh())
                    return last[-1]

                def cleanup() -> None:
                    while last:
                        remove_tree(last.pop())

                variants = {
                    "bare": lambda: bare_forward(loaded, plan, args.batch_size),
                    "laminae": lambda: laminae_extract(loaded, ex, out()),
                }
                if args.hooks_only:
                    variants["hooks-only"] = lambda: run_plan(loaded, plan, args.batch_size, writer=_NullWriter(),
                                                              sites=sites)
                sized = scratch.fresh()
                laminae_extract(loaded, ex, sized)
                store_mb = sum(p.stat().st_size for p in sized.rglob("*") if p.is_file()) / 2**20
                remove_tree(sized)
                check = ""
                if tl is not None:
                    variants["transformer-lens"] = lambda: tl.extract(plan, sites, out(), args.batch_size)
                    a, b = scratch.fresh(), scratch.fresh()
                    laminae_extract(loaded, defaults[experiment], a)
                    tl.extract(plan, sites, b, args.batch_size)
                    difference = max_relative_difference(read_store(a, sites), read_store(b, sites))
                    remove_tree(a), remove_tree(b)
                    check = f"{difference:.1e}"
                    print(f"  {experiment}: TransformerLens vs laminae, max |diff| / max |value| = {check}", flush=True)
                samples = paired_rounds(variants, repeats, label=f"{shape} {experiment}", cleanup=cleanup)
                row = {"model": shape, "experiment": experiment, "tokens": n_tokens(plan), "rows": plan.n_rows,
                       "rounds": repeats, "store MiB": store_mb}
                for name in variants:
                    row[f"{name} s"] = median(s.wall for s in samples[name])
                    row[f"{name} min s"] = min(s.wall for s in samples[name])
                pairs = [(name, "bare") for name in variants if name != "bare"]
                pairs += [("laminae", "transformer-lens")] if tl is not None else []
                for a, b in pairs:
                    ratios = paired_ratios(samples, a, b)
                    key = f"{a}/{b}".replace("transformer-lens", "TL")
                    ratio_rows.append({"model": shape, "experiment": experiment, "ratio": key,
                                       "median": median(ratios), "range": spread(ratios),
                                       "of minima": row[f"{a} min s"] / row[f"{b} min s"],
                                       "cpu median": median(paired_ratios(samples, a, b, field="cpu"))})
                row["TL max rel diff"] = check
                results.append(row)
            if tl is not None:
                tl.close()
            del loaded, tl
    finally:
        scratch.cleanup()

    columns = ["model", "experiment", "tokens", "rows", "rounds", "store MiB"]
    columns += [c for c in results[0] if c.endswith(" s")]
    columns += ["TL max rel diff"] if not args.no_tl else []
    print("## wall time per path: median and minimum over the rounds")
    print_table(results, columns)
    print("## ratios: median (and range) of the per-round paired ratios of wall time; the ratio of the minima "
          "(the least disturbed runs); the median paired ratio of process CPU time")
    print_table(ratio_rows, ["model", "experiment", "ratio", "median", "range", "of minima", "cpu median"])
    for r in ratio_rows:
        if r["model"] != "gpt2-large-shape" or r["ratio"] not in ("laminae/bare", "laminae/TL"):
            continue
        bound, goal = (1.10, "<= 1.10x the bare forward") if r["ratio"] == "laminae/bare" else (1.0, "faster than TL")
        verdicts = ", ".join(f"{label} {r[key]:.3f} -> {'MET' if r[key] <= bound else 'NOT MET'}"
                             for label, key in (("median", "median"), ("minima", "of minima")))
        print(f"goal: laminae {goal} ({r['experiment']}): {verdicts}")
    return results


if __name__ == "__main__":
    main()
