"""Peak memory of the corpus extraction (`corpus.extract`, experiment adjustments' sites) against
corpus length, unsharded and sharded (32k and 1M tokens by default).

    .venv/bin/python benchmarks/bench_memory.py                          # tiny-gpt2, 32k and 1M tokens, 4 shards (~10 min)
    .venv/bin/python benchmarks/bench_memory.py --quick                  # 8k and 32k tokens, 2 shards (~1 min)
    .venv/bin/python benchmarks/bench_memory.py --model gpt2-small-shape --lengths 2048 32768 --shards 0

Each measurement is one fresh Python process running laminae's real code on a `.jsonl` corpus
(the seed's passage, one record each, as many as needed; `corpus.max_tokens` cuts the run at
exactly the length): the whole extraction stage (`laminae.stages.extract.extract`: model load,
tokenisation to the on-disk windows, rows.tsv streamed, hooks, HDF5 writes), and, with
`--shards N`, each of the N shard jobs (the same function with `shard=`) and the gather
(`laminae.stages.gather`: virtual datasets, rows.tsv concatenated). 1024-token windows (the
model's context), batch 8, the four sites experiment adjustments reads. The peak is the child's
`ru_maxrss`; a `load-only` child (imports + model load) gives the floor. `--during` runs the
experiment during extraction instead (no store; its reducer holds per-token index columns).
`--tracemalloc` adds, from one more child per extraction and shard, the peak of Python-heap
allocations (rows, token lists; not torch tensors).

Models: `tiny-gpt2` (4 blocks, d_model 64: a 1M-token store is 4 GB; the default, so that the
part that could grow with the corpus, the plan and the rows, is what shows) or
`gpt2-small-shape` (12 blocks, d_model 768: ~150 GB of activations at 1M tokens: use short
lengths).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, print_header, print_table

LENGTHS = (32768, 1048576)
MODELS = {
    "gpt2-small-shape": ["model=tiny-gpt2", "model.name=bench-gpt2-small-shape",
                         "model.random_init.config={n_layer: 12, n_embd: 768, n_head: 12, n_positions: 1024}",
                         "model.n_layers=12", "model.d_model=768", "model.n_params=124000000"],
    "tiny-gpt2": ["model=tiny-gpt2"],
}
PASSAGE = ROOT / "data" / "corpora" / "nietzsche.txt"
PASSAGE_TOKENS = 340   # at least this many GPT-2 tokens per record (346)


def make_corpus(path: Path, tokens: int) -> None:
    """A .jsonl corpus of at least `tokens` GPT-2 tokens: the seed's passage, one record per line."""
    record = json.dumps({"text": PASSAGE.read_text(encoding="utf-8").strip()})
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(tokens // PASSAGE_TOKENS + 1):
            handle.write(record + "\n")


def overrides_for(model: str, corpus: Path, tokens: int, batch_size: int, models_dir: Path, out_root: Path,
                  shards: int = 1, during: bool = False) -> list[str]:
    return [*MODELS[model], f"corpus.path={corpus}", f"corpus.max_tokens={tokens}", f"corpus.shards={shards}",
            f"batch_size={batch_size}", "device=cpu", f"models_dir={models_dir}", f"results_dir={out_root}",
            "experiments=[adjustments]", *(["adjustments.during_extraction=true"] if during else [])]


def child(args: argparse.Namespace) -> None:
    """One measurement, in this fresh process; prints one JSON line."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    import torch

    from laminae.config import load_runs
    from laminae.shards import Shard
    from laminae.models.loading import load_model
    from laminae.registry import discover
    from laminae.stages.gather import gather
    from laminae.stages.extract import extract

    torch.set_num_threads(os.cpu_count() or 1)
    (run,) = load_runs(json.loads(args.overrides), project_root=ROOT)
    stage = run.extraction("adjustments")  # corpus.extract
    record = {"stage": stage.name, "hash": stage.hash, "config": stage.config}
    out = Path(args.out)
    start = time.perf_counter()
    if args.load_only:
        load_model(stage.config["model"], "cpu", run.runtime["models_dir"], ROOT)
    elif args.gather:
        gather(record, run.runtime, sorted(Path(args.shard_root).iterdir(), key=lambda p: int(p.name)), out, discover())
    else:
        shard = Shard(*map(int, args.shard.split("/")), run.runtime["batch_size"]) if args.shard else None
        extract(record, run.runtime, out, ROOT, discover(), shard=shard)
    wall = time.perf_counter() - start
    result = {"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall}
    if not args.load_only:
        with open(out / "rows.tsv", encoding="utf-8") as handle:
            result["rows"] = sum(1 for _ in handle) - 1
    if args.tracemalloc:
        result["python_heap_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def measure(overrides: list[str], out: Path, *extra: str, keep: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", "--overrides", json.dumps(overrides), "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per point (default 1)")
    parser.add_argument("--quick", action="store_true", help="8k and 32k tokens, 2 shards")
    parser.add_argument("--model", choices=list(MODELS), default="tiny-gpt2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--shards", type=int, default=None, help="also measure N shard jobs and their gather (0: not)")
    parser.add_argument("--during", action="store_true", help="adjustments.during_extraction=true (no store)")
    parser.add_argument("--tracemalloc", action="store_true", help="also report the Python-heap peak per point")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gather", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--shard-root", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return []
    lengths = args.lengths or ([8192, 32768] if args.quick else list(LENGTHS))
    shards = args.shards if args.shards is not None else (2 if args.quick else 4)
    trace = ["--tracemalloc"] if args.tracemalloc else []

    print_header(f"bench_memory: peak RSS of the corpus extraction vs corpus length ({args.model})",
                 " ".join(["bench_memory.py", *sys.argv[1:]]))
    results = []
    with tempfile.TemporaryDirectory(prefix="laminae-bench-mem-") as tmp:
        scratch = Path(tmp)
        models_dir, corpus = scratch / "models", scratch / "corpus.jsonl"
        make_corpus(corpus, max(lengths))
        from laminae.config import load_runs
        from laminae.models.random_models import ensure_random_model

        def overrides(tokens: int, count: int = 1) -> list[str]:
            return overrides_for(args.model, corpus, tokens, args.batch_size, models_dir, scratch / "results", count,
                                 args.during)

        (run,) = load_runs(overrides(lengths[0]), project_root=ROOT)
        ensure_random_model(run.config["model"], models_dir)   # built once, outside the measured processes
        floor = median(measure(overrides(lengths[0]), scratch / "load", "--load-only")["maxrss_mib"]
                       for _ in range(args.repeats))
        print(f"load-only (imports + model): peak RSS {floor:.0f} MiB", flush=True)
        for tokens in lengths:
            points = [("whole extraction", overrides(tokens), [])]
            for index in range(shards):
                points.append((f"shard {index} of {shards}", overrides(tokens, shards), ["--shard", f"{index}/{shards}"]))
            for what, point_overrides, extra in points:
                is_shard = bool(extra)
                out = scratch / "shards" / extra[1].split("/")[0] if is_shard else scratch / "activations"
                runs = [measure(point_overrides, out, *extra, keep=is_shard) for _ in range(args.repeats)]
                if trace:   # a child of its own: tracing allocations costs memory of its own
                    runs[0]["python_heap_peak_mib"] = measure(point_overrides, out, *extra, *trace,
                                                              keep=is_shard)["python_heap_peak_mib"]
                results.append(_row(what, tokens, runs, floor))
                print(f"  {tokens} tokens, {what}: peak {results[-1]['peak RSS MiB']:.0f} MiB", file=sys.stderr, flush=True)
            if shards:
                runs = [measure(overrides(tokens, shards), scratch / "gathered", "--gather", "--shard-root",
                                str(scratch / "shards")) for _ in range(args.repeats)]
                results.append(_row(f"gather of {shards}", tokens, runs, floor))
                shutil.rmtree(scratch / "shards", ignore_errors=True)
                print(f"  {tokens} tokens, gather: peak {results[-1]['peak RSS MiB']:.0f} MiB", file=sys.stderr, flush=True)
    columns = ["job", "tokens", "rows", "runs", "peak RSS MiB", "above load-only MiB", "wall s"] + \
        (["python heap peak MiB"] if args.tracemalloc else [])
    print(f"## peak RSS (median of {args.repeats} fresh process(es) per point); load-only floor {floor:.0f} MiB; "
          f"{args.model}, batch {args.batch_size}, 1024-token windows{', during extraction' if args.during else ''}")
    print_table(results, columns)
    for job in dict.fromkeys(row["job"] for row in results):
        rows = [row for row in results if row["job"] == job]
        ratio = rows[-1]["peak RSS MiB"] / rows[0]["peak RSS MiB"]
        print(f"goal peak({rows[-1]['tokens']} tokens) <= 1.2x peak({rows[0]['tokens']} tokens), {job}: "
              f"{ratio:.2f}x -> {'MET' if ratio <= 1.2 else 'NOT MET'}")
    return results


def _row(job: str, tokens: int, runs: list[dict], floor: float) -> dict:
    peak = median(r["maxrss_mib"] for r in runs)
    row = {"job": job, "tokens": tokens, "rows": runs[0].get("rows", ""), "runs": len(runs), "peak RSS MiB": peak,
           "above load-only MiB": peak - floor, "wall s": median(r["wall_s"] for r in runs)}
    if "python_heap_peak_mib" in runs[0]:
        row["python heap peak MiB"] = median(r["python_heap_peak_mib"] for r in runs)
    return row


if __name__ == "__main__":
    main()
