"""Cross-validated linear decoding per layer: folds that respect groups, a logistic-regression
probe, and a label-permutation null.

What a row is (a word's category, a token's part of speech) is decoded from its vector at
every layer by a multinomial logistic regression on standardised features (scikit-learn:
`StandardScaler` then `LogisticRegression`, fitted on the training folds only):

    >>> folds = group_folds(labels, groups=words, n_splits=5, seed=0)     # no word in two folds
    >>> folds = contiguous_folds(window_of_each_row, n_splits=5)           # stretches of a corpus
    >>> result = decode_layers(x, labels, folds, groups=words, n_permutations=50, seed=0)
    >>> result.accuracy.shape              # (n_layers, n_folds): accuracy on each test fold
    >>> result.mean("accuracy"), result.interval("accuracy", 0.95)   # (n_layers,) each
    >>> result.p_value["accuracy"]         # (n_layers,) one-sided permutation p-values

Definitions (docs/EXPERIMENTS.md, experiment `probes`):

- accuracy on fold f: the fraction of its test rows whose label the probe fitted on the other
  folds predicts; balanced accuracy: the mean over the classes present in the test fold of the
  recall of each (`sklearn.metrics.balanced_accuracy_score`).
- the layer's score: the mean over folds, with a t interval over folds, mean +- t_{k-1} s / sqrt(k)
  (k folds, s their standard deviation). Folds share training rows, so their scores are not
  independent and no unbiased variance estimator exists (Bengio & Grandvalet 2004): the interval
  describes the spread over folds; the permutation test carries the inference.
- chance: the same folds scored by a probe that ignores the input and predicts the training
  folds' most frequent class (accuracy: that class's share of the test fold; balanced accuracy:
  1 / the classes in the test fold), averaged over folds.
- the null: the whole cross-validation refitted on permuted labels (the same folds, the same
  permutations at every layer), the statistic being the mean score over folds; p = (1 + #{null
  >= observed}) / (1 + n_permutations) (`laminae.metrics.resampling.permutation_p_value`).
  Permutations respect the groups: `unit="group"` shuffles the labels of whole groups (every
  row of a word keeps its word's label; the labels must be constant within a group),
  `unit="within"` shuffles the labels among the rows of each group (a corpus stretch keeps its
  class frequencies).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from laminae.metrics.resampling import Seed, as_generator, check_confidence, percentile_interval, permutation_p_value

#: The two scores computed on every fold.
SCORES = ("accuracy", "balanced_accuracy")
PERMUTATION_UNITS = ("group", "within")

Fold = tuple[np.ndarray, np.ndarray]   # (train row indices, test row indices)


# ------------------------------------------------------------------------------------- folds
def group_folds(labels: np.ndarray, groups: Sequence, n_splits: int, seed: int = 0) -> list[Fold]:
    """Stratified folds that never split a group: (train, test) index arrays, one per fold.

    labels: (n_rows,) class codes; groups: (n_rows,) any hashable (a word). Uses
    `sklearn.model_selection.StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)`,
    which balances the classes over folds as far as the groups allow. Raises ValueError when
    there are fewer groups than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    codes = _group_codes(groups)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    if n_splits < 2 or n_groups < n_splits:
        raise ValueError(f"{n_splits} folds need at least 2 folds and as many groups; there are {n_groups} groups")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():   # "the least populated class has only k members": expected for small sets
        warnings.simplefilter("ignore", UserWarning)
        return [(np.sort(train), np.sort(test)) for train, test in splitter.split(np.zeros(labels.size), labels, codes)]


def contiguous_folds(blocks: Sequence, n_splits: int) -> list[Fold]:
    """Folds of contiguous stretches: the rows' blocks (e.g. window indices, in row order) are cut,
    in order, into `n_splits` runs of consecutive blocks holding about equal numbers of rows, so no
    block is split and each test fold is one stretch of the text.

    blocks: (n_rows,) non-decreasing block ids. Raises ValueError with fewer blocks than folds.
    """
    blocks = np.asarray(blocks)
    if blocks.size and np.any(blocks[1:] < blocks[:-1]):
        raise ValueError("contiguous_folds needs the rows in block order (non-decreasing block ids)")
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]]) if blocks.size else np.zeros(0, int)
    if n_splits < 2 or starts.size < n_splits:
        raise ValueError(f"{n_splits} folds need at least 2 folds and as many blocks; there are {starts.size} blocks")
    # fold k starts at the block whose first row is nearest k * n_rows / n_splits (distinct, increasing)
    cuts = [0]
    for k in range(1, n_splits):
        target = k * blocks.size / n_splits
        index = int(np.argmin(np.abs(starts - target)))
        index = min(max(index, cuts[-1] + 1), starts.size - (n_splits - k))
        cuts.append(index)
    bounds = [int(starts[i]) for i in cuts] + [blocks.size]
    rows = np.arange(blocks.size)
    return [(np.r_[rows[:a], rows[b:]], rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def check_folds(folds: Sequence[Fold], groups: Sequence, n_rows: int) -> None:
    """Raise ValueError unless the test folds partition the rows, each fold's train set is the
    rest, and no group has rows in two test folds."""
    codes = _group_codes(groups)
    seen = np.zeros(n_rows, dtype=np.int64)
    for train, test in folds:
        seen[test] += 1
        if np.intersect1d(train, test).size or train.size + test.size != n_rows:
            raise ValueError("a fold's train and test rows must be complementary")
        if np.intersect1d(codes[train], codes[test]).size:
            raise ValueError("a group has rows in both the train and the test part of a fold")
    if not np.all(seen == 1):
        raise ValueError("the test folds must cover every row exactly once")


# ------------------------------------------------------------------------------ permutations
def permute_labels(labels: np.ndarray, groups: Sequence, rng: np.random.Generator, unit: str = "group") -> np.ndarray:
    """One permutation of `labels` (n_rows,) that respects `groups` (see the module docstring)."""
    labels = np.asarray(labels)
    codes = _group_codes(groups)
    if unit == "group":
        first = np.unique(codes, return_index=True)[1]        # (n_groups,) a row of each group
        group_labels = labels[first]
        if np.any(labels != group_labels[codes]):
            raise ValueError("unit='group' needs one label per group; use unit='within'")
        return rng.permutation(group_labels)[codes]
    if unit == "within":
        out = labels.copy()
        for g in range(int(codes.max()) + 1 if codes.size else 0):
            members = np.flatnonzero(codes == g)
            out[members] = labels[rng.permutation(members)]
        return out
    raise ValueError(f"unit must be one of {PERMUTATION_UNITS}, got {unit!r}")


# ------------------------------------------------------------------------------------ probes
def make_probe(c: float = 1.0, max_iter: int = 1000):
    """The probe: `Pipeline([StandardScaler(), LogisticRegression(C=c, max_iter=max_iter)])`
    (lbfgs, multinomial for more than two classes; an L2 penalty of strength 1/c)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(C=c, max_iter=max_iter))])


def cross_validate(x: np.ndarray, labels: np.ndarray, folds: Sequence[Fold], *, c: float = 1.0,
                   max_iter: int = 1000) -> np.ndarray:
    """Scores of the probe on each fold: x (n_rows, width), labels (n_rows,) -> (len(SCORES), n_folds).

    A training fold of a single class predicts that class (logistic regression needs two)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    out = np.empty((len(SCORES), len(folds)))
    for f, (train, test) in enumerate(folds):
        if np.unique(labels[train]).size < 2:
            predicted = np.full(test.size, labels[train][0])
        else:
            predicted = make_probe(c, max_iter).fit(x[train], labels[train]).predict(x[test])
        out[0, f] = accuracy_score(labels[test], predicted)
        out[1, f] = balanced_accuracy_score(labels[test], predicted)
    return out


def chance_scores(labels: np.ndarray, folds: Sequence[Fold]) -> np.ndarray:
    """The scores of predicting the training folds' most frequent class (ties: the smallest code),
    averaged over folds: (len(SCORES),)."""
    labels = np.asarray(labels)
    out = np.empty((len(SCORES), len(folds)))
    for f, (train, test) in enumerate(folds):
        values, counts = np.unique(labels[train], return_counts=True)
        majority = values[np.argmax(counts)]
        out[0, f] = np.mean(labels[test] == majority)
        out[1, f] = 1.0 / np.unique(labels[test]).size
    return out.mean(axis=1)


# ------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class DecodingResult:
    """What `decode_layers` computed; arrays per score name (SCORES)."""

    folds: dict[str, np.ndarray]          # score -> (n_layers, n_folds) per-fold scores
    chance: dict[str, float]              # score -> the majority-class baseline on the same folds
    null: dict[str, np.ndarray]           # score -> (n_layers, n_permutations) mean over folds
    p_value: dict[str, np.ndarray]        # score -> (n_layers,); NaN without permutations
    n_classes: int
    n_permutations: int
    settings: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return next(iter(self.folds.values())).shape[0]

    @property
    def accuracy(self) -> np.ndarray:
        return self.folds["accuracy"]

    def mean(self, score: str) -> np.ndarray:
        """(n_layers,) mean over folds."""
        return self.folds[score].mean(axis=1)

    def interval(self, score: str, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), each (n_layers,): the t interval over folds (`fold_interval`)."""
        return fold_interval(self.folds[score], confidence)

    def null_band(self, score: str, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), each (n_layers,): the central `confidence` of the permutation null."""
        return percentile_interval(self.null[score], confidence)


def fold_interval(scores: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """mean +- t_{k-1, (1+confidence)/2} * s / sqrt(k) along the last axis (k folds, s the sample
    standard deviation, ddof=1): (..., k) -> (low, high), each (...,)."""
    check_confidence(confidence)
    scores = np.asarray(scores, dtype=np.float64)
    k = scores.shape[-1]
    mean = scores.mean(axis=-1)
    if k < 2:
        return np.full(mean.shape, np.nan), np.full(mean.shape, np.nan)
    half = scipy.stats.t.ppf(0.5 + confidence / 2, k - 1) * scores.std(axis=-1, ddof=1) / math.sqrt(k)
    return mean - half, mean + half


def decode_layers(x: np.ndarray, labels: np.ndarray, folds: Sequence[Fold], *, groups: Sequence | None = None,
                  n_permutations: int = 0, unit: str = "group", seed: Seed = 0, c: float = 1.0,
                  max_iter: int = 1000) -> DecodingResult:
    """Cross-validated probe scores at every layer, and their permutation null.

    x: (n_layers, n_rows, width); labels: (n_rows,) integer class codes; folds from `group_folds`
    or `contiguous_folds`; groups: (n_rows,) the permutation's groups (None: every row its own).
    The permutations are drawn once (in order, from `numpy.random.default_rng(seed)` through
    `permute_labels`) and shared by every layer. Fits run on one BLAS thread: the problems are
    small and the CPU is shared, and threads made them 20x slower, not faster.
    """
    from threadpoolctl import threadpool_limits

    x = np.asarray(x)
    labels = np.asarray(labels)
    if x.ndim != 3 or x.shape[1] != labels.size:
        raise ValueError(f"x must be (n_layers, n_rows, width) with n_rows = {labels.size} labels, got {x.shape}")
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    groups = np.arange(labels.size) if groups is None else groups
    check_folds(folds, groups, labels.size)
    rng = as_generator(seed)
    shuffles = [permute_labels(labels, groups, rng, unit) for _ in range(n_permutations)]
    n_layers = x.shape[0]
    observed = np.empty((len(SCORES), n_layers, len(folds)))
    null = np.empty((len(SCORES), n_layers, n_permutations))
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # a test fold may lack a class the probe predicts; a small set may not converge fully
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", module="sklearn")
        for layer in range(n_layers):
            features = np.asarray(x[layer], dtype=np.float64)   # (n_rows, width)
            observed[:, layer] = cross_validate(features, labels, folds, c=c, max_iter=max_iter)
            for p, shuffled in enumerate(shuffles):
                null[:, layer, p] = cross_validate(features, shuffled, folds, c=c, max_iter=max_iter).mean(axis=1)
    chance = chance_scores(labels, folds)
    means = observed.mean(axis=2)   # (n_scores, n_layers)
    return DecodingResult(
        folds={s: observed[i] for i, s in enumerate(SCORES)},
        chance={s: float(chance[i]) for i, s in enumerate(SCORES)},
        null={s: null[i] for i, s in enumerate(SCORES)},
        p_value={s: permutation_p_value(means[i], null[i]) for i, s in enumerate(SCORES)},
        n_classes=int(np.unique(labels).size),
        n_permutations=int(n_permutations),
        settings={"c": float(c), "max_iter": int(max_iter), "unit": unit, "n_folds": len(folds)},
    )


def _group_codes(groups: Sequence) -> np.ndarray:
    """Integer codes 0..G-1 of the groups, in order of first appearance: (n_rows,)."""
    order: dict = {}
    return np.asarray([order.setdefault(g.item() if isinstance(g, np.generic) else g, len(order)) for g in groups],
                      dtype=np.int64)
