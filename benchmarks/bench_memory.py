"""Peak memory of the extraction stage of experiment adjustments (`corpus.extract`) against corpus
length (~2k, 8k, 32k tokens).

    .venv/bin/python benchmarks/bench_memory.py                  # gpt2-small shape, batch 2 and 8, 1 run each (~15 min)
    .venv/bin/python benchmarks/bench_memory.py --quick          # tiny-gpt2, batch 8 (~1 min)
    .venv/bin/python benchmarks/bench_memory.py --model tiny-gpt2 --batch-sizes 8 --repeats 3

Each measurement is one fresh Python process running laminae's real extraction stage
(`laminae.stages.extract.extract` on the `corpus.extract` stage of a config with
`experiments=[adjustments]`: model loading from disk, tokenisation, windows, rows.tsv, hooks,
HDF5 writes) on a corpus made by repeating data/corpora/nietzsche.txt, with 1024-token windows
(the model's context) and the sites experiment adjustments reads (attn_out, mlp_out, resid_pre,
resid_post). The peak is
the child's `ru_maxrss` (peak resident set size). A `load-only` child (imports + model load,
no extraction) gives the floor. `--tracemalloc` adds one child per length that reports the peak
of Python-heap allocations (rows, token lists; not torch tensors).

Models: `gpt2-small-shape` (a random GPT-2 with GPT-2 small's shape: 12 blocks, d_model 768;
124M parameters, the default: big enough that holding a whole corpus of activations would show,
~4.8 GB at 32k tokens) or `tiny-gpt2` (4 blocks, d_model 64: a whole 32k corpus is only 33 MB).
Random models are built once into a scratch `models/` folder, outside the measured children.

Batch size matters on its own: with batch 8, a 2k-token corpus (2 windows) fills a quarter of a
batch while 8k and 32k fill whole batches, so their per-forward working set is 4x larger. Batch
2 (2 windows per forward at every length) isolates the effect of corpus length.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, print_header, print_table

LENGTHS = (2048, 8192, 32768)
MODELS = {
    "gpt2-small-shape": ["model=tiny-gpt2", "model.name=bench-gpt2-small-shape",
                         "model.random_init.config={n_layer: 12, n_embd: 768, n_head: 12, n_positions: 1024}",
                         "model.n_layers=12", "model.d_model=768", "model.n_params=124000000"],
    "tiny-gpt2": ["model=tiny-gpt2"],
}
CORPUS = ROOT / "data" / "corpora" / "nietzsche.txt"


def make_corpus(path: Path, tokens: int) -> int:
    """A text of `tokens` GPT-2 tokens (at most; BPE may merge one less): the seed corpus
    repeated and cut at a token boundary. Returns the exact count."""
    from _common import tokenizer

    tok = tokenizer()
    text = CORPUS.read_text(encoding="utf-8").strip()
    per_copy = len(tok(text + "\n\n", add_special_tokens=False)["input_ids"])
    full = "\n\n".join([text] * (tokens // per_copy + 2))
    ids = tok(full, add_special_tokens=False, verbose=False)["input_ids"][:tokens]
    cut = tok.decode(ids)
    while len(tok(cut, add_special_tokens=False, verbose=False)["input_ids"]) > tokens:
        ids = ids[:-1]
        cut = tok.decode(ids)
    path.write_text(cut, encoding="utf-8")  # no trailing newline: the corpus reader strips it anyway
    return len(tok(cut.strip(), add_special_tokens=False, verbose=False)["input_ids"])


def overrides_for(model: str, corpus: Path, batch_size: int, models_dir: Path, out_root: Path) -> list[str]:
    return [*MODELS[model], f"corpus.path={corpus}", f"batch_size={batch_size}", "device=cpu",
            f"models_dir={models_dir}", f"results_dir={out_root}", "experiments=[adjustments]"]


def child(args: argparse.Namespace) -> None:
    """One measurement, in this fresh process; prints one JSON line."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    import torch

    from laminae.config import load_runs
    from laminae.models.loading import load_model
    from laminae.registry import discover
    from laminae.stages.extract import extract

    torch.set_num_threads(os.cpu_count() or 1)
    (run,) = load_runs(json.loads(args.overrides), project_root=ROOT)
    stage = run.extraction("adjustments")  # corpus.extract
    record = {"stage": stage.name, "hash": stage.hash, "config": stage.config}
    start = time.perf_counter()
    rows = 0
    if args.load_only:
        load_model(stage.config["model"], "cpu", run.runtime["models_dir"], ROOT)
    else:
        out = Path(args.out)
        extract(record, run.runtime, out, ROOT, discover())
        rows = sum(1 for _ in open(out / "rows.tsv", encoding="utf-8")) - 1
    wall = time.perf_counter() - start
    result = {"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall, "rows": rows}
    if args.tracemalloc:
        result["python_heap_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def measure(overrides: list[str], out: Path, load_only: bool = False, trace: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", "--overrides", json.dumps(overrides), "--out", str(out)]
    command += ["--load-only"] if load_only else []
    command += ["--tracemalloc"] if trace else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per point (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny-gpt2, batch 8, 1 run")
    parser.add_argument("--model", choices=list(MODELS), default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--tracemalloc", action="store_true", help="also report the Python-heap peak per length")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return []
    repeats = args.repeats or 1
    model = args.model or ("tiny-gpt2" if args.quick else "gpt2-small-shape")
    batch_sizes = args.batch_sizes or ([8] if args.quick else [2, 8])

    print_header(f"bench_memory: peak RSS of the extraction stage vs corpus length ({model})",
                 " ".join(["bench_memory.py", *sys.argv[1:]]))
    results = []
    with tempfile.TemporaryDirectory(prefix="laminae-bench-mem-") as tmp:
        scratch = Path(tmp)
        models_dir = scratch / "models"
        corpora = {}
        for length in args.lengths:
            corpora[length] = scratch / f"corpus_{length}.txt"
            corpora[length] = (corpora[length], make_corpus(corpora[length], length))
        # build the random model once, outside the measured processes
        from laminae.config import load_runs
        from laminae.models.random_models import ensure_random_model

        (run,) = load_runs(overrides_for(model, corpora[args.lengths[0]][0], 1, models_dir, scratch / "results"),
                           project_root=ROOT)
        ensure_random_model(run.config["model"], models_dir)
        floor = [measure(overrides_for(model, corpora[args.lengths[0]][0], 1, models_dir, scratch / "r"),
                         scratch / "load", load_only=True)["maxrss_mib"] for _ in range(repeats)]
        print(f"load-only (imports + model): peak RSS {median(floor):.0f} MiB", flush=True)
        for batch_size in batch_sizes:
            base = None
            for length in args.lengths:
                path, tokens = corpora[length]
                overrides = overrides_for(model, path, batch_size, models_dir, scratch / "r")
                runs = [measure(overrides, scratch / "activations") for _ in range(repeats)]
                peak = median(r["maxrss_mib"] for r in runs)
                base = base or peak
                row = {"model": model, "batch": batch_size, "tokens": tokens, "windows": math.ceil(tokens / 1024),
                       "runs": repeats, "peak RSS MiB": peak, "vs first length": peak / base,
                       "above load-only MiB": peak - median(floor), "wall s": median(r["wall_s"] for r in runs)}
                if args.tracemalloc:
                    row["python heap peak MiB"] = measure(overrides, scratch / "activations", trace=True)["python_heap_peak_mib"]
                print(f"  batch {batch_size}, {tokens} tokens: peak {peak:.0f} MiB ({peak / base:.2f}x)", file=sys.stderr,
                      flush=True)
                results.append(row)
    columns = ["model", "batch", "tokens", "windows", "runs", "peak RSS MiB", "vs first length", "above load-only MiB",
               "wall s"] + (["python heap peak MiB"] if args.tracemalloc else [])
    print(f"## peak RSS (median of {repeats} fresh process(es) per point); load-only floor {median(floor):.0f} MiB")
    print_table(results, columns)
    for batch_size in batch_sizes:
        rows = [r for r in results if r["batch"] == batch_size]
        ratio = rows[-1]["peak RSS MiB"] / rows[0]["peak RSS MiB"]
        print(f"goal peak({rows[-1]['tokens']} tokens) <= 1.2x peak({rows[0]['tokens']} tokens), batch {batch_size}: "
              f"{ratio:.2f}x -> {'MET' if ratio <= 1.2 else 'NOT MET'}")
    return results


if __name__ == "__main__":
    main()
