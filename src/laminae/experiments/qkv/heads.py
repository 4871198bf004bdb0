"""Experiment 1 per attention head (`qkv.resolution: heads`): selectivity of Q, K, V and the RSA
between them for every layer and head, grouped-query attention taken into account.

    >>> layout = HeadLayout.from_widths(n_heads=4, n_kv_heads=2, widths={"q": 64, "k": 32, "v": 32})
    >>> layout.kv_of_query.tolist()          # the KV head each query head reads
    [0, 0, 1, 1]
    >>> res = analyse_qkv_heads({"q": q, "k": k, "v": v}, labels, categories, layout, seed=0)
    >>> res.selectivity["q"].p_value.shape   # (n_layers, n_heads); K and V: (n_layers, n_kv_heads)
    >>> res.rsa["q-k"].shape                 # (n_layers, n_heads); "k-v": (n_layers, n_kv_heads)
    >>> write_heads_table(res.rows, run_dir / "metrics")    # -> metrics/qkv_heads.tsv

Head h of a component is columns h*head_dim : (h+1)*head_dim of its activations (the stored
projections are head-major). A K/V head shared by several query heads is analysed once:
selectivity of K and V per KV head, RSA K-V per KV head, and RSA Q-K and Q-V per query head h
against KV head h // (n_heads // n_kv_heads), the one it reads.

Everything reuses the layer-level metrics with (layer, head) as batch axes, and the same seeded
streams as `analyse_qkv` (`resampling_seeds`): the label permutations and the bootstrap resamples
are exactly those of the layer-level table.

`qkv_heads.tsv` has the columns `HEAD_COLUMNS`, one row per number, rows per component (in the
given order), metric, layer, head:

    metric              component  head      value         ci_low, ci_high   p_value, q_value
    selectivity         q, k, v    its own   the index     -                 permutation test, BH
    selectivity_null    q, k, v    its own   null mean     null band         -
    within_mean         q, k, v    its own   numerator     -                 -
    between_mean        q, k, v    its own   denominator   -                 -
    rsa                 q-k, q-v   query     correlation   bootstrap CI      -
    rsa                 k-v        KV        correlation   bootstrap CI      -

The q-value family of `selectivity` is one component's heatmap: every (layer, head) of that
component (n_layers x n_heads tests for Q, n_layers x n_kv_heads for K and V).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from laminae.errors import ConfigError, InputFileError
from laminae.experiments.qkv.seeds import resampling_seeds
from laminae.experiments.qkv.tables import format_table, read_table
from laminae.metrics.multiple_testing import bh_q_values
from laminae.metrics.rsa import rsa, rsa_bootstrap
from laminae.metrics.selectivity import Selectivity, SelectivityTest, check_labels, selectivity_permutation_test
from laminae.metrics.similarity import cosine_similarity
from laminae.atomic import atomic_file

if TYPE_CHECKING:
    from laminae.store import ActivationStore

HEADS_FILENAME = "qkv_heads.tsv"
HEAD_COLUMNS = ("layer", "head", "component", "metric", "value", "ci_low", "ci_high", "p_value", "q_value")
RESOLUTIONS = ("layers", "heads")
RESOLUTION_KEY = "qkv.resolution"
HEAD_COMPONENTS = ("q", "k", "v")


def resolution(settings: Mapping[str, Any]) -> str:
    """`settings["resolution"]` ("layers" when absent), or ConfigError naming `qkv.resolution`."""
    value = settings.get("resolution", "layers")
    if value not in RESOLUTIONS:
        raise ConfigError(RESOLUTION_KEY, " or ".join(RESOLUTIONS), value)
    return value


@dataclass(frozen=True)
class HeadLayout:
    """How a model's Q, K, V split into heads (grouped-query attention: n_kv_heads < n_heads)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def from_widths(cls, n_heads: int, n_kv_heads: int, widths: Mapping[str, int]) -> "HeadLayout":
        """The layout, checked against the stored widths (q: n_heads * head_dim, k and v:
        n_kv_heads * head_dim). Raises ValueError when they disagree."""
        n_heads, n_kv_heads = int(n_heads), int(n_kv_heads)
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads {n_heads} must be a positive multiple of n_kv_heads {n_kv_heads}")
        dims = {c: divmod(int(w), n_heads if c == "q" else n_kv_heads) for c, w in widths.items()}
        head_dims = {d for d, r in dims.values()}
        if any(r for _, r in dims.values()) or len(head_dims) != 1 or 0 in head_dims:
            raise ValueError(f"widths {dict(widths)} do not split into {n_heads} query heads and {n_kv_heads} "
                             "key/value heads of one head size")
        return cls(n_heads, n_kv_heads, head_dims.pop())

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def kv_of_query(self) -> np.ndarray:
        """(n_heads,) the KV head each query head reads: h // group."""
        return np.arange(self.n_heads) // self.group

    def heads_of(self, component: str) -> int:
        return self.n_heads if component == "q" else self.n_kv_heads


def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """Head-major columns -> a head axis: (n_layers, n_items, n_heads * d) -> (n_layers, n_heads, n_items, d)."""
    n_layers, n_items, width = x.shape
    return np.asarray(x).reshape(n_layers, n_items, n_heads, width // n_heads).transpose(0, 2, 1, 3)


class HeadRow(NamedTuple):
    """One number of `qkv_heads.tsv`; NaN marks a field that does not apply."""

    layer: int
    head: int
    component: str
    metric: str
    value: float
    ci_low: float = np.nan
    ci_high: float = np.nan
    p_value: float = np.nan
    q_value: float = np.nan


@dataclass(frozen=True)
class QkvHeadResults:
    """Everything `analyse_qkv_heads` computed; `rows` is the tidy table."""

    components: tuple[str, ...]
    layout: HeadLayout
    selectivity: dict[str, SelectivityTest]   # component -> arrays (n_layers, n_heads_c[, ...])
    q_value: dict[str, np.ndarray]            # component -> (n_layers, n_heads_c) BH q of selectivity
    rsa: dict[str, np.ndarray]                # "q-k" -> (n_layers, n_heads), "k-v" -> (n_layers, n_kv_heads)
    rsa_ci: dict[str, tuple[np.ndarray, np.ndarray]]   # pair -> (low, high), shaped like rsa[pair]
    rows: list[HeadRow]


def analyse_qkv_heads(
    activations: Mapping[str, np.ndarray],
    labels: np.ndarray,
    categories: Sequence[str],
    layout: HeadLayout,
    *,
    selectivity: str = "ratio",
    rsa_method: str = "pearson",
    n_permutations: int = 1000,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    zscore: bool = False,
    seed: int = 0,
) -> QkvHeadResults:
    """Per-head selectivity with its permutation test, and per-head RSA with bootstrap CIs.

    activations[c]: (n_layers, n_items, n_heads_c * head_dim) for c in q, k, v (dict order is
    the table's); labels: (n_items,) codes into `categories`. Same inputs and seed give the
    same table, and the same permutations and resamples as `analyse_qkv`.
    """
    components = tuple(activations)
    unknown = [c for c in components if c not in HEAD_COMPONENTS]
    if unknown:
        raise ValueError(f"per-head analysis splits only {HEAD_COMPONENTS} into heads, got {unknown}")
    arrays = {c: np.asarray(activations[c]) for c in components}
    for c, a in arrays.items():
        expected = layout.heads_of(c) * layout.head_dim
        if a.ndim != 3 or a.shape[-1] != expected:
            raise ValueError(f"activations[{c!r}] must be (n_layers, n_items, {expected}), got shape {a.shape}")
    if len({a.shape[:2] for a in arrays.values()}) != 1:
        raise ValueError(f"components disagree on (n_layers, n_items): { {c: a.shape for c, a in arrays.items()} }")
    n_items = arrays[components[0]].shape[1]
    labels, n_categories = check_labels(labels, n_items, len(categories))
    perm_seed, boot_seed = resampling_seeds(seed)

    # z-scoring is per dimension, so z-scoring a head's columns equals slicing the z-scored layer.
    sims = {c: cosine_similarity(split_heads(arrays[c], layout.heads_of(c)), zscore=zscore)
            for c in components}  # each (n_layers, n_heads_c, n_items, n_items)

    # One permutation test over every head of every component: the same shuffles for all.
    stacked = np.concatenate([sims[c] for c in components], axis=1)  # (n_layers, sum_c n_heads_c, n, n)
    test = selectivity_permutation_test(stacked, labels, form=selectivity, n_permutations=n_permutations,
                                        confidence=confidence, seed=np.random.default_rng(perm_seed),
                                        n_categories=n_categories)
    del stacked
    bounds = np.cumsum([0] + [layout.heads_of(c) for c in components])
    tests = {c: _head_slice(test, slice(bounds[k], bounds[k + 1])) for k, c in enumerate(components)}
    q_values = {c: bh_q_values(tests[c].p_value) for c in components}   # one family per component

    pairs = [(a, b) for i, a in enumerate(components) for b in components[i + 1:]]
    rsa_point: dict[str, np.ndarray] = {}
    rsa_ci: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for query_aligned in (True, False):
        group = [(a, b) for a, b in pairs if ("q" in (a, b)) == query_aligned]
        if not group:
            continue
        used = list(dict.fromkeys(c for pair in group for c in pair))
        # Query-aligned: K and V repeated for the query heads that read them (GQA).
        aligned = np.stack([sims[c][:, layout.kv_of_query] if query_aligned and c != "q" else sims[c]
                            for c in used])  # (n_used, n_layers, n_heads or n_kv_heads, n, n)
        index_pairs = [(used.index(a), used.index(b)) for a, b in group]
        boot = rsa_bootstrap(aligned, index_pairs, method=rsa_method, n_bootstrap=n_bootstrap,
                             confidence=confidence, seed=np.random.default_rng(boot_seed))
        for p, ((a, b), (i, j)) in enumerate(zip(group, index_pairs)):
            name = f"{a}-{b}"
            rsa_point[name] = rsa(aligned[i], aligned[j], method=rsa_method)
            rsa_ci[name] = (boot.ci_low[p], boot.ci_high[p])
    pair_names = [f"{a}-{b}" for a, b in pairs]
    rsa_point = {name: rsa_point[name] for name in pair_names}

    rows = _head_rows(tests, q_values, rsa_point, rsa_ci)
    return QkvHeadResults(components=components, layout=layout, selectivity=tests, q_value=q_values,
                          rsa=rsa_point, rsa_ci={name: rsa_ci[name] for name in pair_names}, rows=rows)


def layout_from_store(store: "ActivationStore", components: Sequence[str]) -> HeadLayout:
    """The head layout recorded in an `ActivationStore` (`attrs` n_heads, n_kv_heads) and its
    widths; InputFileError naming the folder when it is missing or inconsistent."""
    attrs = store.attrs
    if "n_heads" not in attrs:
        raise InputFileError(store.dir, f"records no n_heads; {RESOLUTION_KEY}=heads needs the model's head "
                                        "count: re-extract with this version of laminae")
    n_heads = int(attrs["n_heads"])
    n_kv_heads = int(attrs.get("n_kv_heads", n_heads))
    try:
        return HeadLayout.from_widths(n_heads, n_kv_heads, {c: store.widths[c] for c in components})
    except ValueError as error:
        raise InputFileError(store.dir, f"cannot be split into heads: {error}") from None


def write_heads_table(rows: Sequence[HeadRow], metrics_dir: str | os.PathLike) -> Path:
    """Write `qkv_heads.tsv` into `metrics_dir` atomically; returns its path."""
    folder = Path(metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HEADS_FILENAME
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(format_table(HEAD_COLUMNS, rows, n_int=2, n_text=2))
    return path


def read_heads_table(path: str | os.PathLike) -> list[HeadRow]:
    """Read `qkv_heads.tsv` back into rows (empty cells become NaN); ValueError if malformed."""
    return [HeadRow(*row) for row in read_table(path, HEAD_COLUMNS, n_int=2, n_text=2)]


def _head_slice(test: SelectivityTest, heads: slice) -> SelectivityTest:
    """The heads `heads` (axis 1) of a test computed on (n_layers, n_heads_total, ...) arrays."""
    observed = test.observed
    sliced = {f.name: getattr(observed, f.name)[:, heads] for f in fields(observed) if f.name != "form"}
    return replace(
        test,
        observed=Selectivity(form=observed.form, **sliced),
        null=test.null[:, heads],
        null_per_category=test.null_per_category[:, heads],
        p_value=test.p_value[:, heads],
        p_value_per_category=test.p_value_per_category[:, heads],
        null_mean=test.null_mean[:, heads],
        null_low=test.null_low[:, heads],
        null_high=test.null_high[:, heads],
    )


def _head_rows(tests: Mapping[str, SelectivityTest], q_values: Mapping[str, np.ndarray],
               rsa_point: Mapping[str, np.ndarray], rsa_ci: Mapping[str, tuple[np.ndarray, np.ndarray]]
               ) -> list[HeadRow]:
    rows: list[HeadRow] = []

    def add(component: str, metric: str, value: np.ndarray, ci_low=None, ci_high=None, p_value=None,
            q_value=None) -> None:
        nan = np.full(value.shape, np.nan)
        columns = [np.asarray(a, dtype=np.float64) if a is not None else nan
                   for a in (value, ci_low, ci_high, p_value, q_value)]
        for layer, head in np.ndindex(value.shape):
            rows.append(HeadRow(layer, head, component, metric, *(float(col[layer, head]) for col in columns)))

    for c, t in tests.items():
        add(c, "selectivity", t.observed.index, p_value=t.p_value, q_value=q_values[c])
        add(c, "selectivity_null", t.null_mean, t.null_low, t.null_high)
        add(c, "within_mean", t.observed.within_mean)
        add(c, "between_mean", t.observed.between_mean)
    for name, value in rsa_point.items():
        add(name, "rsa", value, *rsa_ci[name])
    return rows
