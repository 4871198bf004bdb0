"""What a new site costs when a store on disk already holds the others (laminae.config.reuse):
the extraction of `adjustments`' four sites from scratch, against the composite store that
computes attn_out and mlp_out alone and links resid_pre and resid_post from `pos`'s store, in
paired rounds; and the bytes each writes.

    .venv/bin/python benchmarks/bench_composite.py                  # GPT-2 Large's shape and tiny-gpt2, 5 rounds
    .venv/bin/python benchmarks/bench_composite.py --quick          # tiny-gpt2, 3 rounds

Both time `write_extraction` (forward, hooks, writes, the links; model loading not counted) on
experiment 2's corpus window, as the pipeline plans it. The forward pass is the same in both:
what the composite saves is the capture and the writes of the linked sites.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import (ROOT, Scratch, build_model, extraction, median, paired_ratios, paired_rounds, print_header,
                     print_table, registry, remove_tree, rounds_and_models, seeds_run, setup_torch, spread)

from laminae.api.results import folder_size
from laminae.config import load_runs
from laminae.config.reuse import StoreChoices
from laminae.stages.extract import write_extraction


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="tiny-gpt2 only, 3 rounds")
    parser.add_argument("--models", nargs="+", default=None)
    args = parser.parse_args(argv)
    args.experiments = None
    repeats, shapes = rounds_and_models(args)
    print_header("bench_composite: a new site with the others stored, against a fresh extraction",
                 " ".join(["bench_composite.py", *sys.argv[1:]]))
    setup_torch()
    scratch = Scratch()
    rows = []
    try:
        for shape in shapes:
            loaded = build_model(shape)
            results = f"results_dir={scratch.fresh()}"
            stored, folder = store(seeds_run(results, "experiments=[pos]"), "pos")
            write_extraction(loaded, stored.plan, stored.stage, stored.runtime, folder, registry())
            composite = store(seeds_run(results, "experiments=[adjustments]"), "adjustments")
            assert set(composite[0].stage["config"]["reused"]["sites"]) == {"resid_pre", "resid_post"}
            (planned,) = load_runs(["model=tiny-gpt2", results, "experiments=[adjustments]"], project_root=ROOT,
                                   stores=StoreChoices.recorded(Path("/nonexistent")))   # no store reused
            fresh = store(planned, "adjustments")
            assert "reused" not in fresh[0].stage["config"]

            def run(ex, out: Path) -> None:
                write_extraction(loaded, ex.plan, ex.stage, ex.runtime, out, registry())

            samples = paired_rounds({"fresh": lambda: run(*fresh), "composite": lambda: run(*composite)}, repeats,
                                    label=shape, cleanup=lambda: [remove_tree(out) for _, out in (fresh, composite)])
            sizes = {}
            for name, (ex, out) in (("fresh", fresh), ("composite", composite)):
                run(ex, out)
                sizes[name] = folder_size(out)
                remove_tree(out)
            ratios = paired_ratios(samples, "composite", "fresh")
            rows.append({"model": shape, "fresh s": median(s.wall for s in samples["fresh"]),
                         "composite s": median(s.wall for s in samples["composite"]),
                         "composite / fresh": median(ratios), "range": spread(ratios),
                         "fresh MB": sizes["fresh"] / 2**20, "composite MB": sizes["composite"] / 2**20})
    finally:
        scratch.cleanup()
    print_table(rows, ["model", "fresh s", "composite s", "composite / fresh", "range", "fresh MB", "composite MB"])
    return rows


def store(run, experiment: str) -> tuple:
    """(the extraction `experiment` reads in `run`, the folder the pipeline keeps its store in: a
    composite finds the stores it links beside it)."""
    return extraction(run, experiment), run.extraction(experiment).output_dir


if __name__ == "__main__":
    main()
