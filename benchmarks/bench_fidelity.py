"""What the fidelity checks cost an extraction (laminae.capture.fidelity): the extraction stage
(`write_extraction`: forward, hooks, writes; model loading not counted, so the share is an upper
bound of a job's) with its checks against the same stage with them left out (its first batch run
like any other), in paired rounds.

    .venv/bin/python benchmarks/bench_fidelity.py                       # GPT-2 Large's shape and tiny-gpt2, 5 rounds
    .venv/bin/python benchmarks/bench_fidelity.py --quick               # tiny-gpt2, 3 rounds
    .venv/bin/python benchmarks/bench_fidelity.py --dtype bfloat16      # with the float32 comparison

Both seeds' extractions, as the pipeline plans them: experiment 1's 34 prompts (q, k, v stored)
and experiment 2's corpus window (four sites). The goal (issue: fidelity recorded per
extraction) is at most 5% of the extraction. With a 16-bit dtype, a second table times the parts
of the float32 comparison once per model (cast up, float32 forward of the first input, cast
back, readout opened), in the order the check runs them.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import (Scratch, build_model, laminae_extract, median, on_model, paired_model_arguments, paired_ratios,
                     paired_rounds, plans, print_header, print_table, rounds_and_models, setup_torch, spread)

import laminae.stages.extract as extract_stage


class NoCheck:
    """The extraction's first batch as any other: the model alone, no check."""

    checks: list = []

    def __init__(self, loaded, readout=None):
        self.loaded = loaded

    def forward(self, sequences, input_ids, attention_mask):
        return self.loaded.model(input_ids=input_ids, attention_mask=attention_mask)

    def finish(self) -> None:
        pass


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paired_model_arguments(parser)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    repeats, shapes = rounds_and_models(args)
    print_header("bench_fidelity: the extraction with and without its fidelity checks",
                 " ".join(["bench_fidelity.py", *sys.argv[1:]]))
    setup_torch()
    checked = extract_stage.FirstBatchCheck
    scratch = Scratch()
    rows, parts = [], []
    try:
        for shape in shapes:
            loaded = build_model(shape, dtype=getattr(torch, args.dtype))
            if args.dtype != "float32":
                parts.append({"model": shape, **float32_parts(loaded, on_model(plans()["qkv"], shape,
                                                                                scratch.root / "models"))})
            for experiment, ex in plans().items():
                if experiment not in args.experiments:
                    continue
                ex = on_model(ex, shape, scratch.root / "models")   # the readout of the 16-bit check: this model's

                def run(check_class):
                    extract_stage.FirstBatchCheck = check_class
                    try:
                        laminae_extract(loaded, ex, scratch.out())
                    finally:
                        extract_stage.FirstBatchCheck = checked

                samples = paired_rounds({"checked": lambda: run(checked), "unchecked": lambda: run(NoCheck)},
                                        repeats, label=f"{shape} {experiment}", cleanup=scratch.clear)
                ratios = paired_ratios(samples, "checked", "unchecked")
                rows.append({"model": shape, "dtype": args.dtype, "experiment": experiment,
                             "unchecked s": median(s.wall for s in samples["unchecked"]),
                             "checked s": median(s.wall for s in samples["checked"]),
                             "checked / unchecked": median(ratios), "range": spread(ratios)})
    finally:
        scratch.cleanup()
    print_table(rows, ["model", "dtype", "experiment", "unchecked s", "checked s", "checked / unchecked", "range"])
    if parts:
        print()
        print_table(parts, ["model", *PARTS])
    return rows


PARTS = ("cast up s", "float32 forward s", "cast back s", "readout open s")


def float32_parts(loaded, ex) -> dict[str, float]:
    """The float32 comparison's steps on `loaded` (a 16-bit model), each timed once, as
    `FirstBatchCheck.finish` runs them: the first cast touches the float32 memory first, as in a job."""
    import time

    from laminae.capture.fidelity import _capture
    from laminae.stages.records import model_source

    dtype, times = next(loaded.model.parameters()).dtype, []

    def timed(step) -> None:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)

    timed(lambda: loaded.model.to(torch.float32))
    timed(lambda: _capture(loaded, [ex.plan.sequences[0]]))
    timed(lambda: loaded.model.to(dtype))
    model_source(ex.stage, ex.runtime).readout()   # the model built on disk once, not timed
    timed(lambda: model_source(ex.stage, ex.runtime).readout())
    return dict(zip(PARTS, times))


if __name__ == "__main__":
    main()
