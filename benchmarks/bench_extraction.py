"""Extraction cost: laminae (hooks + HDF5 writes, overlapped) against a bare `transformers`
forward of the same model on the same inputs, against the same writes without the model, and
against two peers that capture the same sites and write them with h5py: TransformerLens 4.x
(`TransformerBridge.run_with_cache`) and nnsight (`trace` with `.save()`).

    .venv/bin/python benchmarks/bench_extraction.py                 # both models, 5 rounds (~30 min)
    .venv/bin/python benchmarks/bench_extraction.py --quick         # tiny-gpt2 only, 3 rounds (~1 min)
    .venv/bin/python benchmarks/bench_extraction.py --models gpt2-large-shape --experiments adjustments --no-peers
    .venv/bin/python benchmarks/bench_extraction.py --models gpt2-large-shape --no-peers --serial --overlapped --hooks-only

Models: a random GPT-2 with GPT-2 Large's shape (36 blocks, d_model 1280, 20 heads, float32, built
in memory from a fixed seed; ~3.1 GB) and tiny-gpt2 (4 blocks, d_model 64). Inputs: the seeds'
(`qkv`: the 34 prompts of the default stimuli and template, 5 tokens each, q/k/v kept at the
target token; `adjustments`: the Nietzsche corpus, one window of 346 tokens, attn_out, mlp_out,
resid_pre, resid_post kept at every token), batch size 8 as in conf/config.yaml.

Paths, all on the same model object (the peers on their own copies) and the same right-padded
batches:
  bare      `model(input_ids, attention_mask)` and nothing else
  laminae   the extraction stage (`stimuli.extract` for `qkv`, `corpus.extract` for `adjustments`)
            minus model loading and input planning: `write_extraction`, i.e. `run_plan` into an
            `ActivationWriter`, with `extract.overlap: auto` (each block's rows written by the
            writer thread while the next blocks run, unless torch's threads take every core,
            where each batch is written after its forward, as `serial`); with the stage record
            and runtime settings of the composed config
            (`--batch-size`, `--storage-dtype`, `--compression` and `--chunk-rows` are passed to it
            as the overrides `batch_size`, `extract.storage_dtype`, `extract.compression`,
            `extract.chunk_rows`)
  writes    the same `write_extraction` with the forward pass replaced by writing, in the calling
            thread, the batches one laminae run produced (recorded in memory, untimed): the same
            files, attributes, rows.tsv and rename, as if the model were free
  serial    (--serial) laminae with each batch written after its forward, in the main thread
            (`extract.overlap: false`)
  overlapped (--overlapped) laminae with the writer thread whatever the cores
            (`extract.overlap: true`)
  hooks-only (--hooks-only) `run_plan` with a writer that drops the rows: hooks, row selection,
            host staging and the writer thread, no HDF5
  transformer-lens, nnsight   (unless --no-tl / --no-nnsight / --no-peers) see `_common.py`

Each round runs every path once, in a rotated order; one warm-up round is dropped. Printed: the
median wall time of each path over the rounds, and the median (and min-max) of the per-round
ratios, wall and CPU time, among them laminae / max(bare, writes), the overlap goal. Model
building, the peers' set-up and deleting the written files are not timed. Before timing, the
peers' stored values are checked against laminae's: nnsight's are equal (the same modules run),
TransformerLens' differ by float round-off (its bridge forces eager attention, laminae keeps sdpa).
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import (BATCH_SIZE, NNsightPath, Scratch, TransformerLensPath, WritesAlone, bare_forward,
                     build_model, laminae_extract, max_relative_difference, median, n_params, n_tokens,
                     paired_model_arguments, paired_ratios, paired_rounds, plans, print_header, print_table,
                     read_store, remove_tree, rounds_and_models, seeds_run, setup_torch, spread)

from laminae.capture import overlap_writes, run_plan


class _NullWriter:
    """Takes run_plan's rows and drops them: hooks + row selection + host staging, no HDF5."""

    def write(self, start, batch):
        pass

    def write_layer(self, layer, start, values):
        pass


PEERS = {"transformer-lens": "TL", "nnsight": "nnsight"}


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides that give the extraction stage this run's settings."""
    overrides = [f"batch_size={args.batch_size}", f"extract.storage_dtype={args.storage_dtype}",
                 f"extract.chunk_rows={args.chunk_rows}"]
    return overrides + ([f"extract.compression={args.compression}"] if args.compression else [])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paired_model_arguments(parser)
    parser.add_argument("--no-tl", action="store_true", help="skip the TransformerLens path")
    parser.add_argument("--no-nnsight", action="store_true", help="skip the nnsight path")
    parser.add_argument("--no-peers", action="store_true", help="skip both peers")
    parser.add_argument("--no-writes", action="store_true", help="skip the writes-alone path")
    parser.add_argument("--serial", action="store_true", help="also time laminae with serial writes")
    parser.add_argument("--overlapped", action="store_true", help="also time laminae with the writer thread forced on")
    parser.add_argument("--hooks-only", action="store_true",
                        help="also time laminae's hooks, row selection and staging without the HDF5 writer")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--compression", choices=("gzip", "lzf"), default=None)
    parser.add_argument("--chunk-rows", type=int, default=1024)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch's intra-op threads (default: one per core; fewer leave a core to the writer thread)")
    args = parser.parse_args(argv)
    repeats, models = rounds_and_models(args)
    use = {"transformer-lens": not (args.no_tl or args.no_peers), "nnsight": not (args.no_nnsight or args.no_peers)}

    setup_torch(args.torch_threads)
    print_header("bench_extraction: laminae vs bare forward vs the same writes vs TransformerLens vs nnsight",
                 " ".join(["bench_extraction.py", *sys.argv[1:]]))
    print(f"# extract.overlap auto on the CPU: {'writer thread' if overlap_writes('auto', 'cpu') else 'serial'}"
          f" ({torch.get_num_threads()} torch threads)\n", flush=True)
    inputs = plans(seeds_run(*stage_overrides(args)))
    # the store checked against the peers: float32, uncompressed
    defaults = plans(seeds_run(f"batch_size={args.batch_size}"))
    scratch = Scratch()
    results, ratio_rows = [], []
    try:
        for shape in models:
            loaded = build_model(shape)
            print(f"## {shape}: {n_params(loaded) / 1e6:.0f}M parameters, {loaded.info.n_layers} blocks, "
                  f"d_model {loaded.info.d_model}", flush=True)
            peers = {}
            if use["transformer-lens"]:
                peers["transformer-lens"] = TransformerLensPath(loaded)
            if use["nnsight"]:
                peers["nnsight"] = NNsightPath(loaded)
            for experiment in args.experiments:
                ex = inputs[experiment]
                plan, sites = ex.plan, ex.sites
                out = scratch.out
                variants = {
                    "bare": lambda: bare_forward(loaded, plan, args.batch_size),
                    "laminae": lambda: laminae_extract(loaded, ex, out()),
                }
                if not args.no_writes:
                    writes = WritesAlone(loaded, ex, scratch)
                    variants["writes"] = lambda: writes(out())
                if args.serial:
                    variants["serial"] = lambda: laminae_extract(loaded, ex, out(), overlap=False)
                if args.overlapped:
                    variants["overlapped"] = lambda: laminae_extract(loaded, ex, out(), overlap=True)
                if args.hooks_only:
                    variants["hooks-only"] = lambda: run_plan(loaded, plan, args.batch_size, writer=_NullWriter(),
                                                              sites=sites)
                sized = scratch.fresh()
                laminae_extract(loaded, ex, sized)
                store_mb = sum(p.stat().st_size for p in sized.rglob("*") if p.is_file()) / 2**20
                remove_tree(sized)
                checks = {}
                if peers:
                    reference = scratch.fresh()
                    laminae_extract(loaded, defaults[experiment], reference)
                    expected = read_store(reference, sites)
                    remove_tree(reference)
                for name, peer in peers.items():
                    variants[name] = lambda peer=peer: peer.extract(plan, sites, out(), args.batch_size,
                                                                    storage_dtype=args.storage_dtype)
                    folder = scratch.fresh()
                    peer.extract(plan, sites, folder, args.batch_size)
                    difference = max_relative_difference(expected, read_store(folder, sites))
                    remove_tree(folder)
                    checks[name] = f"{difference:.1e}"
                    print(f"  {experiment}: {name} vs laminae, max |diff| / max |value| = {checks[name]}", flush=True)
                samples = paired_rounds(variants, repeats, label=f"{shape} {experiment}", cleanup=scratch.clear)
                row = {"model": shape, "experiment": experiment, "tokens": n_tokens(plan), "rows": plan.n_rows,
                       "rounds": repeats, "store MiB": store_mb}
                for name in variants:
                    row[f"{name} s"] = median(s.wall for s in samples[name])
                    row[f"{name} min s"] = min(s.wall for s in samples[name])
                if "writes" in samples:  # per round, the slower of the forward and the writes alone
                    samples["max(bare,writes)"] = [max(a, b, key=lambda s: s.wall)
                                                   for a, b in zip(samples["bare"], samples["writes"])]
                    row["max(bare,writes) min s"] = min(s.wall for s in samples["max(bare,writes)"])
                pairs = [(name, "bare") for name in variants if name != "bare"]
                pairs += [("laminae", "max(bare,writes)")] if "writes" in samples else []
                pairs += [("laminae", name) for name in peers]
                for a, b in pairs:
                    ratios = paired_ratios(samples, a, b)
                    key = f"{a}/{b}".replace("transformer-lens", "TL")
                    ratio_rows.append({"model": shape, "experiment": experiment, "ratio": key,
                                       "median": median(ratios), "range": spread(ratios),
                                       "of minima": row[f"{a} min s"] / row[f"{b} min s"],
                                       "cpu median": median(paired_ratios(samples, a, b, field="cpu"))})
                for name in peers:
                    row[f"{PEERS[name]} max rel diff"] = checks[name]
                results.append(row)
                scratch.clear()
            for peer in peers.values():
                peer.close()
            loaded = peers = None  # the next shape is built with this one freed
    finally:
        scratch.cleanup()

    columns = ["model", "experiment", "tokens", "rows", "rounds", "store MiB"]
    columns += [c for c in results[0] if c.endswith(" s") and not c.startswith("max(")]
    columns += [c for c in results[0] if c.endswith("max rel diff")]
    print("## wall time per path: median and minimum over the rounds")
    print_table(results, columns)
    print("## ratios: median (and range) of the per-round paired ratios of wall time; the ratio of the minima "
          "(the least disturbed runs); the median paired ratio of process CPU time")
    print_table(ratio_rows, ["model", "experiment", "ratio", "median", "range", "of minima", "cpu median"])
    goals = {"laminae/max(bare,writes)": (1.10, "<= 1.10x max(bare forward, the same writes alone)"),
             "laminae/bare": (1.10, "<= 1.10x the bare forward"),
             "laminae/TL": (1.0, "faster than TransformerLens"), "laminae/nnsight": (1.0, "faster than nnsight")}
    for r in ratio_rows:
        if r["ratio"] not in goals or (r["ratio"] == "laminae/bare" and (r["model"], r["experiment"]) !=
                                       ("gpt2-large-shape", "adjustments")):
            continue
        bound, goal = goals[r["ratio"]]
        verdicts = ", ".join(f"{label} {r[key]:.3f} -> {'MET' if r[key] <= bound else 'NOT MET'}"
                             for label, key in (("median", "median"), ("minima", "of minima")))
        print(f"goal: laminae {goal} ({r['model']}, {r['experiment']}): {verdicts}")
    return results


if __name__ == "__main__":
    main()
