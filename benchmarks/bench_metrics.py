"""The metrics stages against the extraction they follow, at the seeds' sizes.

    .venv/bin/python benchmarks/bench_metrics.py                    # GPT-2 Large shape + tiny-gpt2, 5 rounds (~15 min)
    .venv/bin/python benchmarks/bench_metrics.py --quick            # tiny-gpt2, 3 rounds (~1 min)
    .venv/bin/python benchmarks/bench_metrics.py --models gpt2-large-shape --profile
    .venv/bin/python benchmarks/bench_metrics.py --models gpt2-large-shape --experiments qkv --overrides qkv.rsa_method=spearman

Per model and experiment, each round times laminae's extraction (the extraction stage the
experiment reads, as `laminae.stages.extract.extract` runs it minus model loading: `run_plan`
into an `ActivationWriter`, hooks + HDF5 writes, model already in memory) and the analysis
stage on a store written by it (`laminae.stages.analysis.run_analysis`, with the stage record
the Snakefile passes: `qkv.analysis` with conf/qkv/default.yaml, 1000 label permutations and
1000 bootstraps, 36 layers x 3 components; `adjustments.analysis` with
conf/adjustments/default.yaml, its reducer streaming the store), in a rotated order. Printed:
medians, and the median of the per-round ratio metrics / extraction (the goal: under 0.10). For
experiment 2 a third path is timed: the extraction stage of the config with
`adjustments.during_extraction=true`, which feeds its own batches to the experiment's reducer
and stores only its results (compared with extraction + metrics, and by bytes on disk; the
analysis stage that then only copies those results into metrics/ is not timed). `--profile` adds
a cProfile of one metrics run per experiment (where the time goes). Also printed: the fixed cost
of a Snakemake job of each kind, i.e. a fresh interpreter importing what the stage's script
imports (workflow/scripts/extract.py, and workflow/scripts/analysis.py with the experiment's
analysis hook).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import time

from _common import (Scratch, build_model, extraction, laminae_extract, median, n_tokens, paired_model_arguments,
                     paired_ratios, paired_rounds, plans, print_header, print_table, record, registry, remove_tree,
                     rounds_and_models, seeds_run, setup_torch, spread)

from laminae.stages.analysis import run_analysis

JOB = "from laminae.stages.runner import run_stage; "
IMPORTS = {  # what workflow/scripts/extract.py and analysis.py import before any work
    "extract job": JOB + "import torch, transformers; from laminae.stages.extract import extract",
    **{f"{experiment} analysis job": JOB + "from laminae.stages.analysis import run_analysis; "
       f"from laminae.registry import discover; discover()[{experiment!r}].hook({hook!r})"
       for experiment, hook in (("qkv", "analyse"), ("adjustments", "reducer"))},
}


def run_metrics(experiment: str, stage: dict, store, out, runtime: dict) -> None:
    """The analysis stage, as workflow/scripts/analysis.py runs it."""
    run_analysis(registry()[experiment], stage, store, out, runtime)


def folder_mb(folder) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def import_seconds(statement: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paired_model_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="cProfile one metrics run per experiment")
    parser.add_argument("--overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for the analysis, e.g. qkv.rsa_method=spearman")
    args = parser.parse_args(argv)
    repeats, models = rounds_and_models(args)

    setup_torch()
    print_header("bench_metrics: metrics stages vs extraction", " ".join(["bench_metrics.py", *sys.argv[1:]]))
    run = seeds_run(*args.overrides)
    inputs = plans(run)
    # experiment 2 with its reducer fed by the extraction: another corpus.extract stage (no sites
    # stored, the analysis settings hashed in), the same inputs
    during = extraction(seeds_run(*args.overrides, "adjustments.during_extraction=true"), "adjustments")
    scratch = Scratch()
    results, during_rows = [], []
    try:
        for shape in models:
            loaded = build_model(shape)
            for experiment in args.experiments:
                ex = inputs[experiment]
                plan = ex.plan
                stage = record(run.stages[f"{experiment}.analysis"])  # its upstream: ex's hash
                store = scratch.fresh()
                laminae_extract(loaded, ex, store)
                fresh = scratch.out
                variants = {"extraction": lambda: laminae_extract(loaded, ex, fresh()),
                            "metrics": lambda: run_metrics(experiment, stage, store, fresh(), run.runtime)}
                if experiment == "adjustments":
                    variants["during extraction"] = lambda: laminae_extract(loaded, during, fresh())
                samples = paired_rounds(variants, repeats, label=f"{shape} {experiment}", cleanup=scratch.clear)
                if experiment == "adjustments":
                    inline = fresh()
                    laminae_extract(loaded, during, inline)
                    two = samples["extraction"], samples["metrics"]
                    sums = [a.wall + b.wall for a, b in zip(*two)]
                    during_rows.append({
                        "model": shape, "rounds": repeats,
                        "extraction + metrics s": median(sums),
                        "during extraction s": median(s.wall for s in samples["during extraction"]),
                        "ratio": median(d.wall / t for d, t in zip(samples["during extraction"], sums)),
                        "activation store MiB": folder_mb(store), "during-extraction output MiB": folder_mb(inline)})
                    scratch.clear()
                ratios = paired_ratios(samples, "metrics", "extraction")
                results.append({"model": shape, "experiment": experiment, "tokens": n_tokens(plan), "rows": plan.n_rows,
                                "rounds": repeats, "extraction s": median(s.wall for s in samples["extraction"]),
                                "metrics s": median(s.wall for s in samples["metrics"]),
                                "metrics/extraction": median(ratios), "range": spread(ratios),
                                "of minima": min(x.wall for x in samples["metrics"]) / min(x.wall for x in samples["extraction"]),
                                "metrics/extraction cpu": median(paired_ratios(samples, "metrics", "extraction", "cpu"))})
                if args.profile:
                    profile = cProfile.Profile()
                    out = fresh()
                    profile.enable()
                    run_metrics(experiment, stage, store, out, run.runtime)
                    profile.disable()
                    scratch.clear()
                    text = io.StringIO()
                    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(18)
                    print(f"### cProfile: {shape} {experiment} metrics\n" + text.getvalue().strip() + "\n", flush=True)
                remove_tree(store)
            loaded = None  # freed before the next shape is built
    finally:
        scratch.cleanup()

    print("## in-process stage time (medians over rounds; ratio: median of per-round ratios)")
    print_table(results, ["model", "experiment", "tokens", "rows", "rounds", "extraction s", "metrics s",
                          "metrics/extraction", "range", "of minima", "metrics/extraction cpu"])
    if during_rows:
        print("## adjustments: two stages (extraction storing activations, then metrics) vs "
              "adjustments.during_extraction=true (one stage storing only the results); ratio: median per round")
        print_table(during_rows, ["model", "rounds", "extraction + metrics s", "during extraction s", "ratio",
                                  "activation store MiB", "during-extraction output MiB"])
    jobs = [{"job": job, "fresh interpreter + imports s": import_seconds(statement)} for job, statement in IMPORTS.items()]
    print("## fixed cost of each Snakemake job before any work (median of 3 fresh interpreters)")
    print_table(jobs, ["job", "fresh interpreter + imports s"])
    for r in results:
        if r["model"] == "gpt2-large-shape":
            verdict = "MET" if r["metrics/extraction"] < 0.10 else "NOT MET"
            print(f"goal metrics < 10% of extraction ({r['model']}, {r['experiment']}): "
                  f"{100 * r['metrics/extraction']:.1f}% -> {verdict}")
    return results


if __name__ == "__main__":
    main()
