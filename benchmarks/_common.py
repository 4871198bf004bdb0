"""Shared pieces of the benchmarks: the machine, paired timing, models, inputs, the extraction
paths (bare forward, laminae, the same writes alone, TransformerLens + h5py, nnsight + h5py).

Not a benchmark itself; see the `bench_*.py` scripts. Everything runs on the CPU with
`torch.set_num_threads(os.cpu_count())` unless a script says otherwise.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import gc
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TQDM_DISABLE", "1")  # laminae's progress bar would interleave with the tables

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from laminae.config import Run, load_runs  # noqa: E402
from laminae.experiment import Experiment  # noqa: E402
from laminae.inputs import ExtractionPlan, input_kind  # noqa: E402
from laminae.models.adapters import get_adapter  # noqa: E402
from laminae.models.loading import LoadedModel, ModelInfo, prepare_tokenizer  # noqa: E402
from laminae.models.random_models import build_random_model  # noqa: E402
from laminae.registry import discover  # noqa: E402
from laminae.sites import SITES  # noqa: E402
from laminae.stages import extract as extract_stage  # noqa: E402
from laminae.capture import iter_batches, pad_right  # noqa: E402
from laminae.stages.extract import write_extraction  # noqa: E402
from laminae.store import layer_filename  # noqa: E402

try:  # laminae's HDF5 settings; absent before they existed (the benchmarks also run on older trees)
    from laminae.store import NO_CHUNK_CACHE  # noqa: E402
except ImportError:
    NO_CHUNK_CACHE = {}

#: The random models the benchmarks use: GPT-2 Large's shape (36 blocks, d_model 1280, 20 heads,
#: ~774M parameters, ~3.1 GB in float32) and the project's tiny-gpt2 (conf/model/tiny-gpt2.yaml).
SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-large-shape": {"n_layer": 36, "n_embd": 1280, "n_head": 20, "n_positions": 1024},
    "tiny-gpt2": {"n_layer": 4, "n_embd": 64, "n_head": 4, "n_positions": 1024},
}
SEED = 0
BATCH_SIZE = 8  # conf/config.yaml's default
EXPERIMENTS = ("qkv", "adjustments")


# ------------------------------------------------------------------------------- machine
def machine() -> dict[str, str]:
    """CPU model, cores, RAM, load and package versions, for the header of every script."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
        ram = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    versions = []
    for package in ("torch", "transformers", "h5py", "numpy", "snakemake", "transformer-lens", "nnsight"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch threads": str(torch.get_num_threads()),
            "ram": ram, "python": platform.python_version(), "versions": ", ".join(versions),
            "load average (1/5/15 min)": load}


def print_header(title: str, command: str) -> None:
    print(f"# {title}\n# command: {command}")
    for key, value in machine().items():
        print(f"# {key}: {value}")
    print(flush=True)


def setup_torch(threads: int | None = None) -> None:
    """Gradients off; torch's intra-op threads: `threads`, or one per core."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.set_grad_enabled(False)


# -------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Sample:
    wall: float  # seconds, perf_counter
    cpu: float   # seconds of user + system CPU time of this process (all threads)


def timed(fn: Callable[[], Any]) -> Sample:
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return Sample(wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def paired_rounds(variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                  label: str = "", cleanup: Callable[[], Any] | None = None) -> dict[str, list[Sample]]:
    """Run every variant once per round, `warmup` + `repeats` rounds, the order rotated each
    round (so drift in the machine's load hits every variant alike); warm-up rounds are
    dropped. `cleanup` runs after every call, untimed (e.g. deleting what it wrote).
    Returns {variant: [Sample per timed round]}."""
    names = list(variants)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        line = []
        for name in order:
            sample = timed(variants[name])
            if cleanup is not None:
                cleanup()
            line.append(f"{name} {sample.wall:.3f}s")
            if round_index >= warmup:
                samples[name].append(sample)
        tag = "warm-up" if round_index < warmup else f"round {round_index - warmup + 1}/{repeats}"
        print(f"  [{label}] {tag}: " + ", ".join(line), file=sys.stderr, flush=True)
    return samples


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def paired_ratios(samples: Mapping[str, list[Sample]], numerator: str, denominator: str,
                  field: str = "wall") -> list[float]:
    """Per-round ratios numerator / denominator (the rounds pair the runs)."""
    return [getattr(a, field) / getattr(b, field) for a, b in zip(samples[numerator], samples[denominator])]


def spread(values: Sequence[float]) -> str:
    """`min-max` of a list, for the tables."""
    return f"{min(values):.3g}-{max(values):.3g}"


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A Markdown table (pasteable into docs/PERFORMANCE.md)."""
    cells = [[_fmt(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(c[i]) for c in cells)) for i, column in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
    print(flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def paired_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--repeats, --quick, --models, --experiments: the options of the paired-round benchmarks."""
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="tiny-gpt2 only, 3 rounds")
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=None)
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))


def rounds_and_models(args: argparse.Namespace) -> tuple[int, list[str]]:
    """(timed rounds, model shapes) from `paired_model_arguments`' options."""
    repeats = args.repeats or (3 if args.quick else 5)
    return repeats, args.models or (["tiny-gpt2"] if args.quick else ["gpt2-large-shape", "tiny-gpt2"])


# -------------------------------------------------------------------------------- inputs
def seeds_run(*overrides: str) -> Run:
    """The composed default config (the seeds' stimuli, template and corpus, the default experiments)
    on tiny-gpt2, planned into stages as the Snakefile plans it."""
    (run,) = load_runs(["model=tiny-gpt2", *overrides], project_root=ROOT)
    return run


def registry() -> dict[str, Experiment]:
    """The experiments laminae knows (`laminae.registry.discover`, cached by it)."""
    return discover(project_root=ROOT)


def record(stage) -> dict[str, Any]:
    """The stage record the Snakefile hands a job: {"stage", "hash", "config"}."""
    return {"stage": stage.name, "hash": stage.hash, "config": stage.config}


_TOKENIZER = None


def tokenizer():
    """GPT-2's real tokenizer (offline), saved once to a temp folder and loaded back, so it has
    a `name_or_path` (TransformerLens needs one) and laminae's right padding + pad token."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        from laminae.models.gpt2_tokenizer import gpt2_tokenizer

        folder = Path(tempfile.mkdtemp(prefix="laminae-bench-tok-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        gpt2_tokenizer().save_pretrained(folder)
        _TOKENIZER = prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
    return _TOKENIZER


@dataclass(frozen=True)
class Extraction:
    """The extraction stage an experiment reads, as the pipeline runs it: the stage record
    (`stimuli.extract` for `qkv`, `corpus.extract` for `adjustments`) and runtime settings of a
    composed config, and its inputs planned exactly as `laminae.stages.extract.extract` plans
    them."""

    experiment: str
    stage: dict[str, Any]      # {"stage", "hash", "config"}
    runtime: dict[str, Any]    # batch_size, compression, chunk_rows, ...
    plan: ExtractionPlan

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites the stage stores (the union of what the experiments reading them declare)."""
        return tuple(self.stage["config"]["sites"])


def extraction(run: Run, experiment: str, max_positions: int = 1024) -> Extraction:
    """`experiment`'s extraction stage in `run` (`run.extraction(experiment)`), with its plan."""
    stage = run.extraction(experiment)
    plan = input_kind(stage.config["inputs"]).plan(stage.config, tokenizer(), max_positions, ROOT)
    return Extraction(experiment, record(stage), run.runtime, plan)


def plans(run: Run | None = None, max_positions: int = 1024) -> dict[str, Extraction]:
    """Both experiments' extractions exactly as the pipeline plans them: `qkv` (34 prompts of
    the default stimuli and template; q, k, v stored) and `adjustments` (the Nietzsche corpus,
    one window; attn_out, mlp_out, resid_pre, resid_post stored)."""
    run = run or seeds_run()
    return {experiment: extraction(run, experiment, max_positions) for experiment in EXPERIMENTS}


def n_tokens(plan: ExtractionPlan) -> int:
    return sum(len(s) for s in plan.sequences)


# -------------------------------------------------------------------------------- models
def build_model(shape: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """A random GPT-2 base model of `shape` (fixed seed; float32 on the CPU unless told), wrapped
    like `laminae.models.loading.load_model` returns it (no disk round trip)."""
    random_init = {"seed": SEED, "tokenizer": "gpt2", "architecture": "gpt2", "config": SHAPES[shape]}
    model = build_random_model(random_init)
    model.config.use_cache = False
    model.requires_grad_(False)
    model.eval().to(device=device, dtype=dtype)
    cfg = model.config
    adapter = get_adapter("gpt2", cfg)
    info = ModelInfo(model_id=f"random:bench-{shape}", revision=None, family="gpt2", n_layers=cfg.n_layer,
                     d_model=cfg.n_embd, n_heads=cfg.n_head, n_kv_heads=cfg.n_head, max_positions=cfg.n_positions,
                     dtype=str(dtype).removeprefix("torch."), device=str(device), random_weights=True)
    return LoadedModel(model=model, tokenizer=tokenizer(), adapter=adapter, info=info)


def on_model(ex: Extraction, shape: str, models_dir: Path) -> Extraction:
    """`ex` with its stage naming the random model `build_model(shape)` builds (the same seed and
    shape) and `models_dir` where the jobs' readout finds it (built there on first use), so that
    what the stage reads of its model (the readout of the 16-bit fidelity check) is that model."""
    import dataclasses

    model = {**ex.stage["config"]["model"], "name": f"bench-{shape}", "pretrained": None, "revision": None,
             "random_init": {"seed": SEED, "tokenizer": "gpt2", "architecture": "gpt2", "config": SHAPES[shape]},
             "n_layers": None, "d_model": None, "n_params": None}
    stage = {**ex.stage, "config": {**ex.stage["config"], "model": model}}
    return dataclasses.replace(ex, stage=stage, runtime={**ex.runtime, "models_dir": str(models_dir)})


def n_params(loaded: LoadedModel) -> int:
    return sum(p.numel() for p in loaded.model.parameters())


# ----------------------------------------------------------------------- extraction paths
def batches(plan: ExtractionPlan, batch_size: int):
    for start in range(0, len(plan.sequences), batch_size):
        yield start, plan.sequences[start : start + batch_size], plan.keep[start : start + batch_size]


def bare_forward(loaded: LoadedModel, plan: ExtractionPlan, batch_size: int = BATCH_SIZE) -> None:
    """The reference: the same right-padded batches through the same model, nothing hooked or
    kept."""
    device = torch.device(loaded.info.device)
    with torch.inference_mode():
        for _, sequences, _ in batches(plan, batch_size):
            input_ids, attention_mask = pad_right(sequences, loaded.tokenizer.pad_token_id, device)
            loaded.model(input_ids=input_ids, attention_mask=attention_mask)


def laminae_extract(loaded: LoadedModel, ex: Extraction, out_dir: Path, overlap: bool | None = None) -> None:
    """laminae's extraction stage minus model loading and planning
    (`laminae.stages.extract.write_extraction`, which `extract()` calls), on `ex`'s stage record
    and runtime: the store, fed by `run_plan` (hooks + row selection + HDF5 writes, and the
    reducers of the experiments the config runs during extraction), then the reducers' results
    and rows.tsv. `overlap` overrides `extract.overlap` (default: as configured, `auto`): False
    writes each batch after its forward, in the calling thread; True always uses the writer
    thread. `out_dir` must not exist;
    the caller removes it."""
    runtime = ex.runtime if overlap is None else {**ex.runtime, "overlap": overlap}
    write_extraction(loaded, ex.plan, ex.stage, runtime, out_dir, registry())


class WritesAlone:
    """The writes of `laminae_extract` without the model: `write_extraction` (writer, provenance
    attributes, layer files, rows.tsv, config.yaml, atomic rename) with `run_plan` replaced by
    writing, in the calling thread, the batches one laminae extraction produced, recorded in
    memory once (not timed). What the extraction would cost if the forward pass were free."""

    def __init__(self, loaded: LoadedModel, ex: Extraction, scratch: "Scratch"):
        if ex.stage["config"]["reductions"]:
            raise ValueError("WritesAlone replays stored sites only; this config computes reductions during extraction")
        self.loaded, self.ex = loaded, ex
        self.batches: list[tuple[int, dict[str, list[np.ndarray]]]] = []

        def record(loaded, plan, batch_size, *, writer=None, sites=(), storage_dtype=torch.float32, **_):
            captured = tuple(site for site in SITES if site in sites)
            for row, batch in iter_batches(loaded, plan, captured, batch_size, storage_dtype):
                self.batches.append((row, {site: [np.array(a) for a in layers] for site, layers in batch.items()}))
                writer.write(row, batch)

        folder = scratch.fresh()
        self._with_run_plan(record, folder)
        remove_tree(folder)

    def __call__(self, out_dir: Path) -> None:
        def replay(loaded, plan, batch_size, *, writer=None, **_):
            for row, batch in self.batches:
                writer.write(row, batch)

        self._with_run_plan(replay, out_dir)

    def _with_run_plan(self, run_plan, out_dir: Path) -> None:
        original = extract_stage.run_plan
        extract_stage.run_plan = run_plan
        try:
            write_extraction(self.loaded, self.ex.plan, self.ex.stage, self.ex.runtime, out_dir, registry())
        finally:
            extract_stage.run_plan = original


class TransformerLensPath:
    """TransformerLens 4.x: `TransformerBridge` around a copy of the model (with GPT-2's LM head
    tied to the embedding, as the bridge expects a `GPT2LMHeadModel`), `run_with_cache` with a
    names filter of the stored sites, then the kept rows of every site written with h5py into
    one file per layer (same dataset shapes, dtype, chunking and HDF5 cache settings as laminae's
    store, so that the comparison is about capturing, not about HDF5 tuning).

    The bridge switches its model to eager attention and replaces its modules in place, hence
    the copy: the bare and laminae paths keep the original model (sdpa)."""

    HOOKS = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "attn_out": "hook_attn_out",
             "mlp_out": "hook_mlp_out", "resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post"}

    def __init__(self, loaded: LoadedModel):
        import logging

        from transformers import GPT2LMHeadModel
        from transformer_lens.model_bridge import TransformerBridge

        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        config = copy.deepcopy(loaded.model.config)
        config.architectures = ["GPT2LMHeadModel"]
        with torch.device("meta"):
            lm = GPT2LMHeadModel(config)
        lm.transformer = copy.deepcopy(loaded.model)
        lm.lm_head.weight = lm.transformer.wte.weight
        lm.eval().requires_grad_(False)
        self.bridge = TransformerBridge.boot_transformers("gpt2", hf_model=lm, tokenizer=loaded.tokenizer,
                                                          device=loaded.info.device)
        self.n_layers = loaded.info.n_layers
        self.pad_id = loaded.tokenizer.pad_token_id
        self.device = torch.device(loaded.info.device)

    def close(self) -> None:
        del self.bridge
        gc.collect()

    def extract(self, plan: ExtractionPlan, sites: Sequence[str], out_dir: Path, batch_size: int = BATCH_SIZE,
                chunk_rows: int = 1024, storage_dtype: str = "float32") -> None:
        assert not plan.average, "the TransformerLens path implements one row per kept position"
        dtype = getattr(torch, storage_dtype)
        names = {f"blocks.{layer}.{self.HOOKS[site]}": (layer, site)
                 for layer in range(self.n_layers) for site in sites}
        out_dir.mkdir(parents=True)
        # h5py with laminae's HDF5 settings (no chunk cache, same chunking): what differs is capture
        files = [h5py.File(out_dir / layer_filename(layer, self.n_layers), "w", **NO_CHUNK_CACHE)
                 for layer in range(self.n_layers)]
        try:
            row = 0
            for _, sequences, keep in batches(plan, batch_size):
                input_ids, attention_mask = pad_right(sequences, self.pad_id, self.device)
                with torch.inference_mode():
                    _, cache = self.bridge.run_with_cache(input_ids, attention_mask=attention_mask,
                                                          names_filter=list(names), return_cache_object=False)
                b = torch.tensor([i for i, positions in enumerate(keep) for _ in positions], device=self.device)
                p = torch.tensor([q for positions in keep for q in positions], device=self.device)
                for name, (layer, site) in names.items():
                    act = cache[name]  # (batch, pos, d_model) or (batch, pos, heads, d_head)
                    rows = act[b, p].reshape(len(b), -1).to(dtype).cpu().numpy()
                    if site not in files[layer]:
                        files[layer].create_dataset(site, shape=(plan.n_rows, rows.shape[1]), dtype=storage_dtype,
                                                    chunks=(min(chunk_rows, plan.n_rows), rows.shape[1]))
                    files[layer][site][row : row + len(b)] = rows
                row += len(b)
                del cache
        finally:
            for handle in files:
                handle.close()


class NNsightPath:
    """nnsight (`NNsight` around a copy of the model, as TransformerLens gets one): per batch one
    `trace` that `.save()`s, for every layer and stored site, the kept rows (selected inside the
    trace, on the model's device, with the same flat index as laminae), then the rows written
    with h5py into one file per layer, with laminae's dataset shapes, dtype, chunking and HDF5
    cache settings (as the TransformerLens path). Sites are read in execution order, as nnsight
    requires: the block's input (resid_pre), `attn.c_attn` (q, k, v: split after), `attn.c_proj`
    (attn_out), `mlp.c_proj` (mlp_out), the block's output (resid_post). GPT-2 only."""

    def __init__(self, loaded: LoadedModel):
        from nnsight import NNsight

        self.model = NNsight(copy.deepcopy(loaded.model))
        self.n_layers = loaded.info.n_layers
        self.d_model = loaded.info.d_model
        self.pad_id = loaded.tokenizer.pad_token_id
        self.device = torch.device(loaded.info.device)

    def close(self) -> None:
        del self.model
        gc.collect()

    def extract(self, plan: ExtractionPlan, sites: Sequence[str], out_dir: Path, batch_size: int = BATCH_SIZE,
                chunk_rows: int = 1024, storage_dtype: str = "float32") -> None:
        assert not plan.average, "the nnsight path implements one row per kept position"
        dtype = getattr(torch, storage_dtype)
        out_dir.mkdir(parents=True)
        files = [h5py.File(out_dir / layer_filename(layer, self.n_layers), "w", **NO_CHUNK_CACHE)
                 for layer in range(self.n_layers)]
        qkv = [site for site in ("q", "k", "v") if site in sites]
        d = self.d_model
        try:
            row = 0
            for _, sequences, keep in batches(plan, batch_size):
                input_ids, attention_mask = pad_right(sequences, self.pad_id, self.device)
                seq = input_ids.shape[1]
                flat = torch.tensor([b * seq + p for b, positions in enumerate(keep) for p in positions],
                                    device=self.device)
                saved: dict[tuple[int, str], Any] = {}
                with torch.inference_mode(), self.model.trace(input_ids=input_ids, attention_mask=attention_mask):
                    for layer in range(self.n_layers):
                        block = self.model.h[layer]
                        if "resid_pre" in sites:
                            saved[layer, "resid_pre"] = _rows(block.input, flat).save()
                        if qkv:
                            saved[layer, "qkv"] = _rows(block.attn.c_attn.output, flat).save()
                        if "attn_out" in sites:
                            saved[layer, "attn_out"] = _rows(block.attn.c_proj.output, flat).save()
                        if "mlp_out" in sites:
                            saved[layer, "mlp_out"] = _rows(block.mlp.c_proj.output, flat).save()
                        if "resid_post" in sites:
                            output = block.output
                            saved[layer, "resid_post"] = _rows(output[0] if isinstance(output, tuple) else output,
                                                               flat).save()
                n = len(flat)
                for layer in range(self.n_layers):
                    values = {site: saved[layer, site] for site in sites if site not in qkv}
                    if qkv:
                        fused = saved[layer, "qkv"]
                        values.update({site: fused[:, i * d:(i + 1) * d] for i, site in enumerate(("q", "k", "v"))
                                       if site in qkv})
                    for site in sites:
                        rows = np.ascontiguousarray(values[site].to(dtype).cpu().numpy())
                        if site not in files[layer]:
                            files[layer].create_dataset(site, shape=(plan.n_rows, rows.shape[1]), dtype=storage_dtype,
                                                        chunks=(min(chunk_rows, plan.n_rows), rows.shape[1]))
                        files[layer][site][row : row + n] = rows
                row += n
                del saved
        finally:
            for handle in files:
                handle.close()


def _rows(act, flat: torch.Tensor):
    """The kept rows of a (batch, seq, width) activation: (rows, width)."""
    return act.reshape(-1, act.shape[-1]).index_select(0, flat)


def read_store(folder: Path, sites: Sequence[str]) -> dict[str, np.ndarray]:
    """{site: (n_layers, rows, width)} from a folder of layer files (laminae's or the TL path's)."""
    paths = sorted(folder.glob("layer_*.h5"))
    out = {}
    for site in sites:
        out[site] = np.stack([h5py.File(path, "r")[site][()] for path in paths])
    return out


def max_relative_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """max |a - b| / max |a| over sites: how far two extractions of the same sites differ."""
    return max(float(np.abs(a[s] - b[s]).max() / max(np.abs(a[s]).max(), 1e-30)) for s in a)


class Scratch:
    """A temp folder whose sub-folders are handed out fresh and removed right after use."""

    def __init__(self, prefix: str = "laminae-bench-"):
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.root = Path(self._tmp.name)
        self._n = 0
        self._handed: list[Path] = []

    def fresh(self) -> Path:
        self._n += 1
        return self.root / f"run{self._n}"

    def out(self) -> Path:
        """A fresh folder for a timed path's output, removed by the next `clear()`."""
        self._handed.append(self.fresh())
        return self._handed[-1]

    def clear(self) -> None:
        """Remove every folder `out()` handed out (between paired rounds, untimed)."""
        while self._handed:
            remove_tree(self._handed.pop())

    def cleanup(self) -> None:
        self._tmp.cleanup()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
