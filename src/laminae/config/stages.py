"""Split a composed config into per-stage configs, hash each, and derive output folders.

Each stage hashes only the keys it reads plus its upstream stage's hash, so a change reruns
exactly the stages downstream of it: a plot setting reruns figures, a template reruns the
experiment-1 extraction and everything after it, and experiment 2 is untouched by both.

    >>> run = plan_run(cfg, project_root=".")
    >>> run.stages["qkv.extract"].dir
    PosixPath('results/tiny-gpt2/qkv/space_furniture_fruit.next_word-3fa9c2d1e0')
    >>> run.stages["qkv.analysis"].upstream == run.stages["qkv.extract"].hash
    True

Layout (one folder per stage, nested under its upstream):

    results/<model>/qkv/<stimuli>.<template>-<h>/activations/     layer_NN.h5, rows.tsv, config.yaml
                                     .../analysis-<h>/metrics/     qkv_laminar.tsv, similarity.h5
                                     .../analysis-<h>/plot-<h>/figures/
    results/<model>/adjustments/<corpus>-<h>/activations/ ... the same below
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bump a stage's version when its computation changes, so cached outputs are not reused.
STAGE_VERSIONS = {"extract": 1, "analysis": 1, "plot": 1}

# The config keys each stage reads (dotted paths); nothing else reaches its hash.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "qkv.extract": ("model", "stimuli", "template", "extract.position", "extract.sites.qkv", "extract.storage_dtype"),
    "qkv.analysis": ("qkv",),
    "qkv.plot": ("plot.dpi", "plot.qkv"),
    "adjustments.extract": ("model", "corpus", "extract.sites.adjustments", "extract.storage_dtype"),
    "adjustments.analysis": ("adjustments",),
    "adjustments.plot": ("plot.dpi", "plot.adjustments"),
}
# An experiment whose analysis may run inside its extraction (a flag key): when the flag is
# true, the extraction's outputs depend on the analysis keys as well, so they join its hash.
ANALYSIS_DURING_EXTRACTION = {"adjustments": "adjustments.during_extraction"}
# Keys that change how a stage runs or lays out bytes, never a stored value: recorded, not hashed.
RUNTIME_KEYS = ("device", "batch_size", "models_dir", "extract.compression", "extract.chunk_rows")
HASH_LENGTH = 10


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def file_digest(paths: list[Path], root: Path) -> str:
    """Content hash of files (names relative to `root`, and bytes), for inputs named by path."""
    sha = hashlib.sha256()
    for path in paths:
        name = path.relative_to(root) if path.is_relative_to(root) else path.name
        sha.update(str(name).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()[:HASH_LENGTH]


def select_keys(cfg: dict[str, Any], dotted_keys: tuple[str, ...]) -> dict[str, Any]:
    """The nested sub-dict of `cfg` holding only `dotted_keys`."""
    out: dict[str, Any] = {}
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        source, target = cfg, out
        for part in parents:
            source = source[part]
            target = target.setdefault(part, {})
        target[leaf] = copy.deepcopy(source[leaf])
    return out


def get_key(cfg: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted key, e.g. `get_key(cfg, "adjustments.during_extraction")`."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@dataclass(frozen=True)
class Stage:
    """One cached step of one experiment: its hashed config and where its outputs live."""

    name: str                      # e.g. "qkv.extract"
    config: dict[str, Any]         # the hashed keys, plus "stage", "version" and "upstream"
    hash: str
    dir: Path                      # the stage's folder; outputs go in a fixed subfolder of it

    @property
    def experiment(self) -> str:
        return self.name.split(".")[0]

    @property
    def kind(self) -> str:
        return self.name.split(".")[1]

    @property
    def upstream(self) -> str | None:
        return self.config["upstream"]

    @property
    def output_dir(self) -> Path:
        return self.dir / {"extract": "activations", "analysis": "metrics", "plot": "figures"}[self.kind]


@dataclass(frozen=True)
class Run:
    """One composed config (one point of a sweep) and its stages."""

    config: dict[str, Any]
    overrides: tuple[str, ...]
    stages: dict[str, Stage] = field(default_factory=dict)

    @property
    def runtime(self) -> dict[str, Any]:
        """The unhashed settings, flat: {"device": ..., "batch_size": ..., "compression": ...}."""
        flat = {}
        for dotted in RUNTIME_KEYS:
            node = self.config
            for part in dotted.split("."):
                node = node[part]
            flat[dotted.rsplit(".", 1)[-1]] = node
        return flat

    @property
    def label(self) -> str:
        """Short human label: the overrides that define this run, or 'default'."""
        return " ".join(self.overrides) or "default"


def plan_run(cfg: dict[str, Any], project_root: str | Path, overrides: tuple[str, ...] = ()) -> Run:
    """Stage configs, hashes and folders for every experiment in `cfg["experiments"]`.

    `cfg` must be validated already (see `validate_config`)."""
    from laminae.config.validate import corpus_documents

    root = Path(project_root)
    results = Path(cfg["results_dir"])
    model = cfg["model"]["name"]
    stages: dict[str, Stage] = {}
    for experiment in cfg["experiments"]:
        extract_keys = STAGE_KEYS[f"{experiment}.extract"]
        flag = ANALYSIS_DURING_EXTRACTION.get(experiment)
        if flag and get_key(cfg, flag):
            extract_keys = (*extract_keys, *STAGE_KEYS[f"{experiment}.analysis"])
        extract_cfg = select_keys(cfg, extract_keys)
        if experiment == "qkv":
            inputs_label = f"{cfg['stimuli']['name']}.{cfg['template']['name']}"
        else:
            documents = corpus_documents(cfg["corpus"]["path"], root)
            extract_cfg["corpus"]["digest"] = file_digest(documents, root.resolve())
            inputs_label = cfg["corpus"]["name"]
        upstream, parent = None, results / model / experiment
        for kind in ("extract", "analysis", "plot"):
            name = f"{experiment}.{kind}"
            stage_cfg = extract_cfg if kind == "extract" else select_keys(cfg, STAGE_KEYS[name])
            stage_cfg.update(stage=name, version=STAGE_VERSIONS[kind], upstream=upstream)
            digest = stable_hash(stage_cfg)
            folder = parent / (f"{inputs_label}-{digest}" if kind == "extract" else f"{kind}-{digest}")
            stages[name] = Stage(name=name, config=stage_cfg, hash=digest, dir=folder)
            upstream, parent = digest, folder
    return Run(config=cfg, overrides=tuple(overrides), stages=stages)
