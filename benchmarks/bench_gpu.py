"""GPU mode: a GPT-2 Large-shaped model (random weights) on one GPU: a bare forward against
laminae's extraction (hooks, host staging, overlapped HDF5 writes), against the same writes
without the model, and against TransformerLens and nnsight where they are installed; tokens/s
and paired ratios. One script, under 5 minutes on one GPU with the defaults.

    python benchmarks/bench_gpu.py                                    # cuda, bfloat16 compute, float32 storage
    python benchmarks/bench_gpu.py --dtype float16 --storage-dtype float16
    python benchmarks/bench_gpu.py --device cpu --shape tiny-gpt2 --repeats 1   # a smoke run anywhere

It needs torch, transformers, h5py and numpy, and imports neither hydra-core nor snakemake (nor
jsonschema): it runs from a checkout on a machine that has only torch, transformers, h5py,
scipy, matplotlib and pyarrow. TransformerLens (`pip install transformer-lens`) and nnsight
(`pip install nnsight`) are timed when importable, else reported as skipped.

Two workloads, on random token ids (the cost depends on the shape, not the text):
  sparse  `--prompts` prompts of `--prompt-tokens` tokens, q, k and v kept at the last token,
          batch `--sparse-batch` (experiment 1's pattern: capture dominates, writes are small)
  dense   `--windows` windows of `--window-tokens` tokens, attn_out, mlp_out, resid_pre and
          resid_post kept at every token, batch `--dense-batch` (experiment 2's pattern at corpus
          scale: GBs of writes, which only the overlap hides)

Paths, on the same batches: `bare` (the model's forward, nothing hooked), `laminae` (an
ActivationWriter fed by `run_plan`: what the extraction stage runs minus provenance records),
`serial` (the same with each batch written after its forward, in the main thread), `writes`
(the same ActivationWriter fed the rows one laminae run produced, from memory: the writes
alone), `transformer-lens`, `nnsight` (see `_common.py`). Every timed call ends with
`torch.cuda.synchronize()`. Before timing: laminae's store equals the serial path's exactly,
nnsight's equals laminae's, TransformerLens' is printed as a max relative difference, and one
laminae pass runs with `torch.cuda.set_sync_debug_mode("error")` inside its hooks (the sink and
the selectors), which fails on any synchronising CUDA call there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: no progress bars in the tables

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import (NNsightPath, Scratch, TransformerLensPath, build_model, max_relative_difference, median,
                     n_params, paired_ratios, paired_rounds, print_header, print_table, read_store, remove_tree,
                     spread)  # noqa: E402

from laminae.capture import HostStaging  # noqa: E402
from laminae.inputs import ExtractionPlan  # noqa: E402
from laminae.capture import forward as capture_forward  # noqa: E402
from laminae.capture import iter_batches, pad_right, run_plan  # noqa: E402
from laminae.stages.extract import STORAGE_DTYPES  # noqa: E402
from laminae.store import ActivationWriter  # noqa: E402

WORKLOADS = {"sparse": ("q", "k", "v"), "dense": ("attn_out", "mlp_out", "resid_pre", "resid_post")}


def synthetic_plan(n: int, length: int, every_token: bool, seed: int = 0) -> ExtractionPlan:
    rng = np.random.default_rng(seed)
    sequences = [[int(t) for t in rng.integers(0, 50256, size=length)] for _ in range(n)]
    keep = [list(range(length)) if every_token else [length - 1] for _ in range(n)]
    rows = [{"input": i, "position": p} for i, positions in enumerate(keep) for p in positions]
    return ExtractionPlan(sequences=sequences, keep=keep, average=False, rows=rows, columns=("input", "position"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def laminae(loaded, plan, sites, batch_size, out_dir: Path, storage: str, overlap: bool = True) -> None:
    with ActivationWriter(out_dir, loaded.info.n_layers, plan.n_rows, {"stage_hash": "bench-gpu"},
                          storage_dtype=storage) as writer:
        run_plan(loaded, plan, batch_size, writer=writer, sites=sites, storage_dtype=STORAGE_DTYPES[storage],
                 overlap=overlap)
        writer.set_rows(plan.rows, plan.columns)


def bare(loaded, plan, batch_size: int) -> None:
    device = torch.device(loaded.info.device)
    with torch.inference_mode():
        for start in range(0, len(plan.sequences), batch_size):
            input_ids, attention_mask = pad_right(plan.sequences[start : start + batch_size],
                                                  loaded.tokenizer.pad_token_id, device)
            loaded.model(input_ids=input_ids, attention_mask=attention_mask)


class Writes:
    """The ActivationWriter fed the rows of one laminae run, from memory (recorded untimed)."""

    def __init__(self, loaded, plan, sites, batch_size, storage: str):
        self.loaded, self.plan, self.storage = loaded, plan, storage
        self.batches = [(row, {site: [np.array(a) for a in layers] for site, layers in batch.items()})
                        for row, batch in iter_batches(loaded, plan, sites, batch_size, STORAGE_DTYPES[storage])]

    def __call__(self, out_dir: Path) -> None:
        with ActivationWriter(out_dir, self.loaded.info.n_layers, self.plan.n_rows, {"stage_hash": "bench-gpu"},
                              storage_dtype=self.storage) as writer:
            for row, batch in self.batches:
                writer.write(row, batch)
            writer.set_rows(self.plan.rows, self.plan.columns)


def check_no_sync_in_hooks(loaded, plan, sites, batch_size, out_dir: Path, storage: str) -> str:
    """One laminae pass with CUDA's sync debug mode set to "error" inside the sink's methods and
    the row selectors: any synchronising call there raises."""
    if torch.device(loaded.info.device).type != "cuda":
        return "skipped (not on CUDA)"
    originals = {name: getattr(HostStaging, name) for name in ("put", "end")}
    original_selector = capture_forward.row_selector

    def strict(fn):
        def wrapped(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return wrapped

    def strict_selector(*args, **kwargs):
        return strict(original_selector(*args, **kwargs))

    try:
        for name, fn in originals.items():
            setattr(HostStaging, name, strict(fn))
        capture_forward.row_selector = strict_selector
        laminae(loaded, plan, sites, batch_size, out_dir, storage)
    finally:
        for name, fn in originals.items():
            setattr(HostStaging, name, fn)
        capture_forward.row_selector = original_selector
        remove_tree(out_dir)
    return "passed: no synchronising CUDA call in the hooks"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="gpt2-large-shape", choices=("gpt2-large-shape", "tiny-gpt2"))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="compute dtype (model.dtype)")
    parser.add_argument("--storage-dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--prompts", type=int, default=2048)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--sparse-batch", type=int, default=64)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window-tokens", type=int, default=1024)
    parser.add_argument("--dense-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="skip TransformerLens and nnsight")
    parser.add_argument("--serial", action="store_true", help="also time the serial path")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here; pass --device cpu for a smoke run")
    torch.set_grad_enabled(False)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    print_header("bench_gpu: bare vs laminae vs writes alone vs TransformerLens vs nnsight",
                 " ".join(["bench_gpu.py", *sys.argv[1:]]))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"# gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
              f"capability {props.major}.{props.minor}\n", flush=True)
    started = time.perf_counter()
    loaded = build_model(args.shape, dtype=getattr(torch, args.dtype), device=str(device))
    print(f"## {args.shape}: {n_params(loaded) / 1e6:.0f}M parameters, {loaded.info.n_layers} blocks, "
          f"d_model {loaded.info.d_model}, {args.dtype} compute, {args.storage_dtype} storage "
          f"(built in {time.perf_counter() - started:.0f} s)", flush=True)
    peers: dict = {}
    if not args.no_peers:
        for name, cls in (("transformer-lens", TransformerLensPath), ("nnsight", NNsightPath)):
            try:
                peers[name] = cls(loaded)
            except ImportError as error:
                print(f"  {name}: skipped ({error.name or error} not installed)", flush=True)
    scratch = Scratch()
    results, ratio_rows = [], []
    try:
        for workload in args.workloads:
            sites = WORKLOADS[workload]
            if workload == "sparse":
                plan, batch_size = synthetic_plan(args.prompts, args.prompt_tokens, False), args.sparse_batch
            else:
                plan, batch_size = synthetic_plan(args.windows, args.window_tokens, True), args.dense_batch
            tokens = sum(len(s) for s in plan.sequences)
            out = scratch.out

            def synced(fn):
                def call():
                    fn()
                    synchronize(device)
                return call

            # checks first: overlap == serial exactly, peers against laminae, no sync in the hooks
            reference, serial_dir = scratch.fresh(), scratch.fresh()
            laminae(loaded, plan, sites, batch_size, reference, args.storage_dtype)
            laminae(loaded, plan, sites, batch_size, serial_dir, args.storage_dtype, overlap=False)
            expected = read_store(reference, sites)
            serial_diff = max_relative_difference(expected, read_store(serial_dir, sites))
            remove_tree(serial_dir)
            store_mib = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file()) / 2**20
            print(f"  {workload}: {len(plan.sequences)} inputs, {tokens} tokens, {plan.n_rows} rows, "
                  f"{store_mib:.0f} MiB stored; overlapped vs serial store: max rel diff {serial_diff:.1e}", flush=True)
            if serial_diff != 0:
                raise SystemExit("bench_gpu: the overlapped store differs from the serial one")
            print(f"  {workload}: sync check {check_no_sync_in_hooks(loaded, plan, sites, batch_size, scratch.fresh(), args.storage_dtype)}",
                  flush=True)
            checks = {}
            for name, peer in peers.items():
                folder = scratch.fresh()
                peer.extract(plan, sites, folder, batch_size, storage_dtype=args.storage_dtype)
                checks[name] = max_relative_difference(expected, read_store(folder, sites))
                remove_tree(folder)
                print(f"  {workload}: {name} vs laminae, max |diff| / max |value| = {checks[name]:.1e}", flush=True)
            remove_tree(reference)

            writes = Writes(loaded, plan, sites, batch_size, args.storage_dtype)
            variants = {
                "bare": synced(lambda: bare(loaded, plan, batch_size)),
                "laminae": synced(lambda: laminae(loaded, plan, sites, batch_size, out(), args.storage_dtype)),
                "writes": lambda: writes(out()),
            }
            if args.serial:
                variants["serial"] = synced(lambda: laminae(loaded, plan, sites, batch_size, out(), args.storage_dtype,
                                                            overlap=False))
            for name, peer in peers.items():
                variants[name] = synced(lambda peer=peer: peer.extract(plan, sites, out(), batch_size,
                                                                       storage_dtype=args.storage_dtype))
            samples = paired_rounds(variants, args.repeats, label=workload, cleanup=scratch.clear)
            writes = None  # its recorded rows freed before the next workload
            row = {"workload": workload, "tokens": tokens, "rows": plan.n_rows, "store MiB": round(store_mib)}
            for name in variants:
                wall = median(s.wall for s in samples[name])
                row[f"{name} s"] = wall
                row[f"{name} tok/s"] = round(tokens / wall)
            samples["max(bare,writes)"] = [max(a, b, key=lambda s: s.wall)
                                           for a, b in zip(samples["bare"], samples["writes"])]
            pairs = [("laminae", "bare"), ("laminae", "max(bare,writes)"), ("writes", "bare")]
            pairs += [("serial", "bare")] if args.serial else []
            pairs += [("laminae", name) for name in peers] + [(name, "bare") for name in peers]
            for a, b in pairs:
                ratios = paired_ratios(samples, a, b)
                ratio_rows.append({"workload": workload, "ratio": f"{a}/{b}".replace("transformer-lens", "TL"),
                                   "median": median(ratios), "range": spread(ratios)})
            row.update({f"{name} max rel diff": f"{value:.1e}" for name, value in checks.items()})
            results.append(row)
    finally:
        for peer in peers.values():
            peer.close()
        scratch.cleanup()

    print("## median wall time and throughput per path")
    print_table(results, list(dict.fromkeys(key for row in results for key in row)))
    print("## ratios: median (and range) of the per-round paired ratios of wall time")
    print_table(ratio_rows, ["workload", "ratio", "median", "range"])
    if device.type == "cuda":
        print(f"# peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"# total: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratio_rows}, indent=1))
    return results


if __name__ == "__main__":
    main()
