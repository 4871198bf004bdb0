"""Experiment 1: laminar profile of category selectivity and RSA in Q, K, V.

The `analyse` hook reads the store and writes the two metrics files (and, with
`resolution: heads`, the per-head table of `heads`: job.out_dir / "qkv_heads.tsv"):

    >>> analyse(job)     # -> job.out_dir / "qkv_laminar.tsv", job.out_dir / "similarity.h5"

built on the in-memory computation:

    >>> acts = {"q": q, "k": k, "v": v}          # each (n_layers, n_items, width); widths may differ
    >>> res = analyse_qkv(acts, labels, ["space", "furniture", "fruit"], words=words, seed=0)
    >>> res.similarity["q"].shape                 # (n_layers, n_items, n_items)
    >>> res.profile("selectivity", "v")           # (n_layers,) values
    >>> write_qkv_tables(res, run_dir / "metrics", attrs=provenance)
    >>> # -> metrics/qkv_laminar.tsv, metrics/similarity.h5

The tidy table has one row per number, columns `TABLE_COLUMNS`, NaN where not applicable
(an empty cell in the TSV). Rows come per component c (in the given order), per metric, per
layer (0-based):

    metric                  value                               ci_low, ci_high          p_value, q_value
    selectivity             index (ratio or difference form)    -                        permutation test
    selectivity_null        mean of the permutation null        the null's central band  -
    within_mean             mean over categories of within_c    -                        -
    between_mean            mean over between-category pairs    -                        -
    selectivity:<category>  within_c / between (or minus)       -                        permutation test
    within_mean:<category>  within_c                            -                        -

and for each pair of components a < b in the given order (component "q-k", "q-v", "k-v"):

    rsa                     correlation of upper triangles      bootstrap percentile CI  -

`q_value` is the Benjamini-Hochberg q-value of `p_value` within its family (`layer_q_values`):
one family per metric, holding every component at every layer: `selectivity` (n_components x
n_layers tests), and each `selectivity:<category>` likewise.

The permutation test and the bootstrap draw from independent streams spawned from `seed`
(`numpy.random.SeedSequence(seed).spawn(2)`), so changing one count leaves the other's draws
as they were; the same permutations serve every layer and component. The p-values are
one-sided (selectivity larger than chance); in the ratio form they are only meaningful while
`between_mean` > 0, which the table lets a reader check.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from laminae.errors import InputFileError
from laminae.experiment import AnalysisJob
from laminae.metrics.multiple_testing import bh_q_values
from laminae.metrics.rsa import RsaBootstrap, rsa, rsa_bootstrap
from laminae.metrics.selectivity import Selectivity, SelectivityTest, check_labels, selectivity_permutation_test
from laminae.metrics.similarity import cosine_similarity
from laminae.experiments.qkv.heads import analyse_qkv_heads, layout_from_store, resolution, write_heads_table
from laminae.experiments.qkv.seeds import resampling_seeds
from laminae.experiments.qkv.tables import format_table, read_table
from laminae.atomic import atomic_file

log = logging.getLogger(__name__)
TABLE_COLUMNS = ("layer", "component", "metric", "value", "ci_low", "ci_high", "p_value", "q_value")
TABLE_FILENAME = "qkv_laminar.tsv"
SIMILARITY_FILENAME = "similarity.h5"
# HDF5 dataset names besides the per-component similarity matrices.
_RESERVED_NAMES = ("labels", "words", "categories")


def analyse(job: AnalysisJob) -> None:
    """The analysis hook: Q, K, V (the components in `settings["components"]`) from the store,
    analysed with the experiment's settings, written as the tidy table and the matrices; with
    `resolution: heads`, also per attention head (`qkv_heads.tsv`, see `heads`)."""
    settings, store = job.settings, job.store
    per_head = resolution(settings) == "heads"   # a bad qkv.resolution fails before any work
    for column in ("word", "category"):
        if store.rows and column not in store.rows[0]:
            raise InputFileError(store.rows.source, f"has no {column!r} column; the qkv analysis needs a "
                                                    "stimuli extraction (word, category per row)")
    layout = layout_from_store(store, settings["components"]) if per_head else None
    categories, labels = category_labels(store.column("category"))
    activations = {component: store.read(component) for component in settings["components"]}
    log.info("analysing %s over %d layers, %d words in %d categories (%s), %d permutations, %d bootstraps",
             "/".join(activations), store.n_layers, store.n_rows, len(categories), ", ".join(categories),
             settings["n_permutations"], settings["n_bootstrap"])
    options = dict(selectivity=settings["selectivity"], rsa_method=settings["rsa_method"],
                   n_permutations=settings["n_permutations"], n_bootstrap=settings["n_bootstrap"],
                   confidence=settings["confidence"], zscore=settings["zscore"], seed=settings["seed"])
    results = analyse_qkv(activations, labels, categories, words=store.column("word"), **options)
    write_qkv_tables(results, job.out_dir, attrs=job.attrs)
    if layout is not None:
        log.info("per head: %d query heads, %d key/value heads of %d dimensions", layout.n_heads,
                 layout.n_kv_heads, layout.head_dim)
        heads = analyse_qkv_heads(activations, labels, categories, layout, **options)
        write_heads_table(heads.rows, job.out_dir)


def category_labels(categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Category names in order of first appearance, and each row's integer code into them.

        >>> category_labels(["fruit", "fruit", "space", "fruit"])
        (['fruit', 'space'], array([0, 0, 1, 0]))
    """
    order: dict[str, int] = {}
    codes = [order.setdefault(name, len(order)) for name in categories]
    return list(order), np.asarray(codes, dtype=np.int64)


class QkvRow(NamedTuple):
    """One number of the tidy table; NaN marks a field that does not apply."""

    layer: int
    component: str
    metric: str
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    q_value: float = math.nan


@dataclass(frozen=True)
class QkvResults:
    """Everything `analyse_qkv` computed; `rows` is the tidy table written to the TSV."""

    components: tuple[str, ...]
    categories: tuple[str, ...]
    labels: np.ndarray  # (n_items,) codes into categories
    words: tuple[str, ...] | None
    similarity: dict[str, np.ndarray]  # component -> (n_layers, n_items, n_items)
    selectivity: dict[str, SelectivityTest]  # component -> arrays over layers
    rsa: dict[str, np.ndarray]  # "q-k" -> (n_layers,)
    rsa_bootstrap: RsaBootstrap  # pairs in the order of `rsa`
    rows: list[QkvRow]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return next(iter(self.similarity.values())).shape[0]

    @property
    def n_items(self) -> int:
        return int(self.labels.shape[0])

    def profile(self, metric: str, component: str, column: str = "value") -> np.ndarray:
        """One column of the table across layers: (n_layers,), e.g. profile("rsa", "q-k")."""
        out = np.full(self.n_layers, np.nan)
        found = False
        for row in self.rows:
            if row.metric == metric and row.component == component:
                out[row.layer] = getattr(row, column)
                found = True
        if not found:
            raise KeyError(f"no rows for metric {metric!r} and component {component!r}")
        return out


def analyse_qkv(
    activations: Mapping[str, np.ndarray],
    labels: np.ndarray,
    categories: Sequence[str],
    *,
    selectivity: str = "ratio",
    rsa_method: str = "pearson",
    n_permutations: int = 1000,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    zscore: bool = False,
    seed: int = 0,
    words: Sequence[str] | None = None,
) -> QkvResults:
    """Similarity matrices, selectivity with its permutation test, and RSA with bootstrap CIs.

    activations[c]: (n_layers, n_items, width_c) for each component c (dict order is kept);
    labels: (n_items,) integer codes into `categories`; words: optional item names, stored in
    similarity.h5. Same inputs and seed give an identical table.
    """
    components = tuple(activations)
    categories = tuple(str(c) for c in categories)
    _check_names(components, categories)
    arrays = [np.asarray(activations[c]) for c in components]
    for name, a in zip(components, arrays):
        if a.ndim != 3:
            raise ValueError(f"activations[{name!r}] must be (n_layers, n_items, width), got shape {a.shape}")
    if len({a.shape[:2] for a in arrays}) != 1:
        shapes = {c: a.shape for c, a in zip(components, arrays)}
        raise ValueError(f"components disagree on (n_layers, n_items): {shapes}")
    n_layers, n_items = arrays[0].shape[:2]
    labels, _ = check_labels(labels, n_items, len(categories))
    if words is not None:
        words = tuple(str(w) for w in words)
        if len(words) != n_items:
            raise ValueError(f"{len(words)} words for {n_items} items")

    # Widths may differ (GQA), so the cosines are per component; everything after is batched.
    sims = np.stack([cosine_similarity(a, zscore=zscore) for a in arrays])  # (K, n_layers, n, n)
    perm_seed, boot_seed = resampling_seeds(seed)
    test = selectivity_permutation_test(
        sims,
        labels,
        form=selectivity,
        n_permutations=n_permutations,
        confidence=confidence,
        seed=np.random.default_rng(perm_seed),
        n_categories=len(categories),
    )
    pairs = [(a, b) for a in range(len(components)) for b in range(a + 1, len(components))]
    pair_names = [f"{components[a]}-{components[b]}" for a, b in pairs]
    rsa_point = {
        name: rsa(sims[a], sims[b], method=rsa_method) for name, (a, b) in zip(pair_names, pairs)
    }  # each (n_layers,)
    boot = rsa_bootstrap(
        sims,
        pairs,
        method=rsa_method,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=np.random.default_rng(boot_seed),
    )

    per_component = {c: _component_test(test, k) for k, c in enumerate(components)}
    rows = _table_rows(per_component, categories, rsa_point, boot, pair_names, n_layers)
    settings = {
        "selectivity_form": selectivity,
        "rsa_method": rsa_method,
        "n_permutations": int(n_permutations),
        "n_bootstrap": int(n_bootstrap),
        "confidence": float(confidence),
        "zscore": bool(zscore),
        "seed": int(seed),
        "n_layers": int(n_layers),
        "n_items": int(n_items),
        "components": list(components),
    }
    return QkvResults(
        components=components,
        categories=categories,
        labels=labels,
        words=words,
        similarity={c: sims[k] for k, c in enumerate(components)},
        selectivity=per_component,
        rsa=rsa_point,
        rsa_bootstrap=boot,
        rows=rows,
        settings=settings,
    )


def write_qkv_tables(results: QkvResults, metrics_dir: str | os.PathLike, attrs: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `qkv_laminar.tsv` and `similarity.h5` into `metrics_dir`, each atomically.

    similarity.h5: one float64 dataset (n_layers, n_items, n_items) per component, `labels`
    (n_items,) int64, `words` and `categories` (UTF-8 strings; `words` holds the item indices
    when no words were given), and as file attributes the analysis settings then `attrs`
    (provenance; non-scalar values are stored as JSON text). Returns the two paths.
    """
    import h5py

    folder = Path(metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    table_path = folder / TABLE_FILENAME
    with atomic_file(table_path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(format_qkv_table(results.rows))

    h5_path = folder / SIMILARITY_FILENAME
    words = results.words if results.words is not None else tuple(str(i) for i in range(results.n_items))
    with atomic_file(h5_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for name in results.components:
                h5.create_dataset(name, data=results.similarity[name])
            h5.create_dataset("labels", data=results.labels.astype(np.int64))
            strings = h5py.string_dtype(encoding="utf-8")
            h5.create_dataset("words", data=np.array(words, dtype=object), dtype=strings)
            h5.create_dataset("categories", data=np.array(results.categories, dtype=object), dtype=strings)
            for key, value in {**results.settings, **dict(attrs)}.items():
                h5.attrs[key] = _attr_value(value)
    return table_path, h5_path


def format_qkv_table(rows: Sequence[QkvRow]) -> str:
    """The TSV text: a header of `TABLE_COLUMNS`, floats as `repr` (round-trip exact), NaN empty."""
    return format_table(TABLE_COLUMNS, rows, n_int=1, n_text=2)


def read_qkv_table(path: str | os.PathLike) -> list[QkvRow]:
    """Read a `qkv_laminar.tsv` back into rows (empty cells become NaN)."""
    return [QkvRow(*row) for row in read_table(path, TABLE_COLUMNS, n_int=1, n_text=2)]


@dataclass(frozen=True)
class LaminarTable:
    """`qkv_laminar.tsv` as arrays: `get(metric, component, column)` -> (n_layers,)."""

    n_layers: int
    columns: dict[tuple[str, str], dict[str, np.ndarray]]   # (metric, component) -> column -> values

    @classmethod
    def read(cls, path: str | Path) -> "LaminarTable":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "not found; run the qkv_metrics rule first")
        try:
            rows = read_qkv_table(path)
        except ValueError as error:
            raise InputFileError(path, f"is not a qkv_laminar table ({error})") from None
        if not rows:
            raise InputFileError(path, "has no rows")
        n_layers = max(row.layer for row in rows) + 1
        columns: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for row in rows:
            entry = columns.setdefault((row.metric, row.component), {
                name: np.full(n_layers, np.nan) for name in ("value", "ci_low", "ci_high", "p_value", "q_value")})
            for name in entry:
                entry[name][row.layer] = getattr(row, name)
        return cls(n_layers=n_layers, columns=columns)

    def has(self, metric: str, component: str) -> bool:
        return (metric, component) in self.columns

    def get(self, metric: str, component: str, column: str = "value") -> np.ndarray:
        return self.columns[(metric, component)][column]

    def components(self, metric: str) -> list[str]:
        """Components that have `metric`, in table order."""
        return list(dict.fromkeys(c for m, c in self.columns if m == metric))

    def categories(self) -> list[str]:
        """Categories of the per-category selectivity rows, in table order."""
        return list(dict.fromkeys(m.split(":", 1)[1] for m, _ in self.columns if m.startswith("selectivity:")))


def _component_test(test: SelectivityTest, k: int) -> SelectivityTest:
    """Slice component k out of a test computed on (K, n_layers, ...) arrays."""
    obs = test.observed
    return SelectivityTest(
        observed=Selectivity(
            form=obs.form,
            index=obs.index[k],
            index_per_category=obs.index_per_category[k],
            within_mean=obs.within_mean[k],
            within_mean_per_category=obs.within_mean_per_category[k],
            between_mean=obs.between_mean[k],
        ),
        null=test.null[k],
        null_per_category=test.null_per_category[k],
        p_value=test.p_value[k],
        p_value_per_category=test.p_value_per_category[k],
        null_mean=test.null_mean[k],
        null_low=test.null_low[k],
        null_high=test.null_high[k],
        n_permutations=test.n_permutations,
        confidence=test.confidence,
    )


def layer_q_values(tests: Mapping[str, SelectivityTest]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """BH q-values of the table's families: `selectivity` over every component and layer, and
    each category's `selectivity:<category>` likewise.

    Returns ({component: (n_layers,)}, {component: (n_layers, C)}), shaped like the p-values."""
    components = list(tests)
    overall = bh_q_values(np.stack([tests[c].p_value for c in components]))  # (K, n_layers): one family
    per_category = np.stack([tests[c].p_value_per_category for c in components])  # (K, n_layers, C)
    per_category_q = np.stack([bh_q_values(per_category[..., j]) for j in range(per_category.shape[-1])], axis=-1)
    return ({c: overall[k] for k, c in enumerate(components)},
            {c: per_category_q[k] for k, c in enumerate(components)})


def _table_rows(
    tests: Mapping[str, SelectivityTest],
    categories: tuple[str, ...],
    rsa_point: Mapping[str, np.ndarray],
    boot: RsaBootstrap,
    pair_names: list[str],
    n_layers: int,
) -> list[QkvRow]:
    rows: list[QkvRow] = []
    q_overall, q_per_category = layer_q_values(tests)

    def add(component: str, metric: str, value, ci_low=None, ci_high=None, p_value=None, q_value=None) -> None:
        nan = np.full(n_layers, np.nan)
        columns = [np.asarray(a, dtype=np.float64) if a is not None else nan
                   for a in (value, ci_low, ci_high, p_value, q_value)]
        for layer in range(n_layers):
            rows.append(QkvRow(layer, component, metric, *(float(col[layer]) for col in columns)))

    for c, t in tests.items():
        obs = t.observed
        add(c, "selectivity", obs.index, p_value=t.p_value, q_value=q_overall[c])
        add(c, "selectivity_null", t.null_mean, t.null_low, t.null_high)
        add(c, "within_mean", obs.within_mean)
        add(c, "between_mean", obs.between_mean)
        for j, cat in enumerate(categories):
            add(c, f"selectivity:{cat}", obs.index_per_category[:, j], p_value=t.p_value_per_category[:, j],
                q_value=q_per_category[c][:, j])
        for j, cat in enumerate(categories):
            add(c, f"within_mean:{cat}", obs.within_mean_per_category[:, j])
    for p, name in enumerate(pair_names):
        add(name, "rsa", rsa_point[name], boot.ci_low[p], boot.ci_high[p])
    return rows


def _check_names(components: tuple[str, ...], categories: tuple[str, ...]) -> None:
    if len(components) < 1:
        raise ValueError("activations must hold at least one component")
    for name in components:
        if not isinstance(name, str) or not name or any(ch in name for ch in "-/\t\n") or name in _RESERVED_NAMES:
            raise ValueError(f"component name {name!r} must be non-empty, without '-', '/', tabs or newlines, and not one of {_RESERVED_NAMES}")
    for name in categories:
        if not name or any(ch in name for ch in "\t\n"):
            raise ValueError(f"category name {name!r} must be non-empty, without tabs or newlines")
    if len(set(categories)) != len(categories):
        raise ValueError(f"category names must be unique, got {list(categories)}")


def _attr_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    return json.dumps(value, sort_keys=True, default=str)
