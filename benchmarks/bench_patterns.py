"""What asking for attention patterns (site `pattern`) costs an extraction: the corpus extraction
of experiment 2 (`adjustments`: attn_out, mlp_out, resid_pre, resid_post stored) as it runs by
default (sdpa attention), against the same model with eager attention storing the same sites,
and with eager attention storing `pattern` too (what an extraction of `pattern` does: the model is
loaded eager only then, `load_model(..., patterns=True)`), in paired rounds (the order rotated
every round). Timed: `write_extraction` (forward, hooks, writes; model loading not counted).

    .venv/bin/python benchmarks/bench_patterns.py                       # GPT-2 small's shape and tiny-gpt2, 5 rounds
    .venv/bin/python benchmarks/bench_patterns.py --quick               # tiny-gpt2, 3 rounds
    .venv/bin/python benchmarks/bench_patterns.py --window-tokens 256   # longer windows (pattern grows with n_keys)

The corpus is the seeds' Nietzsche text cut into windows of `--window-tokens` (default 128: three
windows, batched with padding). `eager / sdpa` is the attention kernel's share, `pattern / sdpa`
the whole cost of asking for patterns (kernel, the (batch, heads, query, key) probabilities
padded and kept, n_heads * n_keys values per row and layer written); medians of the per-round
ratios of wall time, and of this process's CPU seconds (`cpu`: steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from _common import (SHAPES, Scratch, build_model, extraction, median, paired_ratios, paired_rounds, print_header,
                     print_table, registry, seeds_run, setup_torch, spread)

from laminae.capture.forward import plan_keys
from laminae.stages.extract import write_extraction

#: GPT-2 small's shape (12 blocks, d_model 768, 12 heads: ~124M parameters) and tiny-gpt2's
PATTERN_SHAPES = {"gpt2-small-shape": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
                  "tiny-gpt2": None}


def eager_copy(loaded):
    """The same weights with eager attention (GPT-2's attention dispatches on the config at each call)."""
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager" and loaded.model.config._attn_implementation == "sdpa"
    return type(loaded)(model=model, tokenizer=loaded.tokenizer, adapter=loaded.adapter, info=loaded.info)


def with_pattern(stage: dict) -> dict:
    """The stage record storing `pattern` besides its sites."""
    config = copy.deepcopy(stage["config"])
    config["sites"] = [*config["sites"], "pattern"]
    return {**stage, "config": config}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="tiny-gpt2 only, 3 rounds")
    parser.add_argument("--models", nargs="+", choices=list(PATTERN_SHAPES), default=None)
    parser.add_argument("--window-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    shapes = args.models or (["tiny-gpt2"] if args.quick else list(PATTERN_SHAPES))
    print_header("bench_patterns: a corpus extraction with and without attention patterns",
                 " ".join(["bench_patterns.py", *sys.argv[1:]]))
    setup_torch()
    ex = extraction(seeds_run(f"corpus.window_tokens={args.window_tokens}"), "adjustments")
    tokens = sum(len(s) for s in ex.plan.sequences)
    print(f"corpus: {len(ex.plan.sequences)} windows, {tokens} tokens, n_keys {plan_keys(ex.plan)}, "
          f"batch size {ex.runtime['batch_size']}\n", flush=True)
    scratch = Scratch()
    rows = []
    try:
        for shape in shapes:
            if PATTERN_SHAPES[shape] is not None:   # build_model knows the shapes of SHAPES
                SHAPES.setdefault(shape, PATTERN_SHAPES[shape])
            sdpa = build_model(shape)
            eager = eager_copy(sdpa)
            stored, patterned = ex.stage, with_pattern(ex.stage)

            def run(loaded, stage):
                write_extraction(loaded, ex.plan, stage, ex.runtime, scratch.out(), registry())

            samples = paired_rounds({"sdpa": lambda: run(sdpa, stored), "eager": lambda: run(eager, stored),
                                     "eager + pattern": lambda: run(eager, patterned)},
                                    repeats, label=shape, cleanup=scratch.clear)
            eager_ratio = paired_ratios(samples, "eager", "sdpa")
            pattern_ratio = paired_ratios(samples, "eager + pattern", "sdpa")
            # CPU seconds of this process: less sensitive than wall time to other processes' load
            eager_cpu = paired_ratios(samples, "eager", "sdpa", field="cpu")
            pattern_cpu = paired_ratios(samples, "eager + pattern", "sdpa", field="cpu")
            rows.append({"model": shape, "tokens": tokens,
                         "sdpa s": median(s.wall for s in samples["sdpa"]),
                         "eager s": median(s.wall for s in samples["eager"]),
                         "eager + pattern s": median(s.wall for s in samples["eager + pattern"]),
                         "eager / sdpa": median(eager_ratio), "range e": spread(eager_ratio),
                         "pattern / sdpa": median(pattern_ratio), "range p": spread(pattern_ratio),
                         "eager / sdpa cpu": median(eager_cpu), "pattern / sdpa cpu": median(pattern_cpu),
                         "range p cpu": spread(pattern_cpu)})
    finally:
        scratch.cleanup()
    print_table(rows, ["model", "tokens", "sdpa s", "eager s", "eager + pattern s", "eager / sdpa", "range e",
                       "pattern / sdpa", "range p", "eager / sdpa cpu", "pattern / sdpa cpu", "range p cpu"])
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
