"""Logit-lens statistics: what a layer's readout says about the next token, and per-layer
summaries with bootstrap intervals over tokens.

    >>> targets = next_token_targets(window, position, token_id)     # (n_rows,), -1: no next token
    >>> final = FinalReference.of(final_logits)                     # final_logits: (rows, vocab)
    >>> stats = lens_stats(layer_logits, targets_t, final)          # each (rows,)
    >>> stats.rank, stats.logprob, stats.kl, stats.top1, stats.agree
    >>> summary = bootstrap_location(values, "median", n_bootstrap=1000, confidence=0.95, seed=[0, 3])

Definitions, per token t with next token y (z the layer's logits (vocab,), z_f the final
layer's; p = softmax(z), p_f = softmax(z_f); computed in float64 from float32 logits):

    rank[t]    = 1 + #{v : z[v] > z[y]}                 1 = the layer's top-1 is the next token
    logprob[t] = log p[y]                               natural log
    kl[t]      = sum_v p_f[v] (log p_f[v] - log p[v])   KL(final || layer), nats; 0 at the last layer
    top1[t]    = argmax_v z[v]                          the smallest index among ties
    agree[t]   = top1[t] == argmax_v z_f[v]

Memory: a few (rows, vocab) float64 arrays; callers pass blocks of rows (`block_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from laminae.metrics.resampling import Seed, as_generator, check_confidence, percentile_interval

#: (rows x vocab) elements per block of logits: 2**22 float64 = 32 MiB per array.
BLOCK_ELEMENTS = 2**22
#: Values x resamples per block of the bootstrap (float64, a few alive at once): 16 MiB each.
BOOTSTRAP_BLOCK_ELEMENTS = 2**21


def block_rows(vocab_size: int, block_elements: int = BLOCK_ELEMENTS) -> int:
    """How many rows of logits to process at once so that one (rows, vocab) float64 array
    stays within `block_elements` values (at least 1)."""
    return max(1, block_elements // max(1, int(vocab_size)))


def next_token_targets(window: np.ndarray, position: np.ndarray, token_id: np.ndarray) -> np.ndarray:
    """The id of each row's next token: row i + 1's token when it is the same window's next
    position, else -1 (the last token of a window has none). Each input (n_rows,); rows in
    corpus order (rows.tsv). -> (n_rows,) int64."""
    window, position, token_id = (np.asarray(a, dtype=np.int64) for a in (window, position, token_id))
    targets = np.full(window.shape, -1, dtype=np.int64)
    if window.size > 1:
        follows = (window[1:] == window[:-1]) & (position[1:] == position[:-1] + 1)
        targets[:-1] = np.where(follows, token_id[1:], -1)
    return targets


@dataclass(frozen=True)
class FinalReference:
    """The final layer's distribution over the vocabulary for a block of rows: what KL(final ||
    layer) needs of it, computed once for every layer."""

    probs: torch.Tensor         # (rows, vocab) float64: p_f
    neg_entropy: torch.Tensor   # (rows,) float64: sum_v p_f log p_f
    top1: torch.Tensor          # (rows,) int64

    @classmethod
    def of(cls, final_logits: torch.Tensor) -> "FinalReference":
        """From the final layer's logits (rows, vocab), any float dtype."""
        logits = final_logits.to(torch.float64)
        logprobs = torch.log_softmax(logits, dim=-1)
        probs = logprobs.exp()
        return cls(probs, (probs * logprobs).sum(dim=1), logits.argmax(dim=-1))


@dataclass(frozen=True)
class LensStats:
    """Per-token statistics of one layer for a block of rows (module docstring), each (rows,)."""

    rank: np.ndarray        # int64, >= 1
    logprob: np.ndarray     # float64
    kl: np.ndarray          # float64, >= 0 up to round-off
    top1: np.ndarray        # int64
    agree: np.ndarray       # bool


def lens_stats(logits: torch.Tensor, targets: torch.Tensor, final: FinalReference) -> LensStats:
    """Rank and log-probability of `targets` (rows,) int64 (every one a valid id) under
    `logits` (rows, vocab), KL(final || layer) and top-1 agreement with `final`."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1] or final.probs.shape != logits.shape:
        raise ValueError(f"logits (rows, vocab) {tuple(logits.shape)}, targets (rows,) {tuple(targets.shape)} and "
                         f"final (rows, vocab) {tuple(final.probs.shape)} must agree")
    targets = targets.to(device=logits.device, dtype=torch.int64)[:, None]
    target_logit = logits.gather(1, targets)                                     # (rows, 1)
    rank = 1 + (logits > target_logit).sum(dim=1)
    z = logits.to(torch.float64)                                                 # (rows, vocab)
    lse = torch.logsumexp(z, dim=1)                                              # (rows,)
    # log p = z - lse, and sum_v p_f = 1, so sum_v p_f log p = p_f . z - lse: no (rows, vocab) log p
    cross = torch.bmm(final.probs[:, None, :], z[:, :, None])[:, 0, 0]           # p_f . z, no (rows, vocab) temp
    kl = final.neg_entropy - (cross - lse)
    top1 = logits.argmax(dim=-1)
    return LensStats(rank=rank.cpu().numpy().astype(np.int64),
                     logprob=(z.gather(1, targets)[:, 0] - lse).cpu().numpy(), kl=kl.cpu().numpy(),
                     top1=top1.cpu().numpy().astype(np.int64), agree=(top1 == final.top1.to(top1.device)).cpu().numpy())


@dataclass(frozen=True)
class Location:
    """A location statistic of some values and its percentile bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int


def bootstrap_location(values: np.ndarray, statistic: Literal["median", "mean"], *, n_bootstrap: int,
                       confidence: float, seed: Seed,
                       block_elements: int = BOOTSTRAP_BLOCK_ELEMENTS) -> Location:
    """The median or mean of `values` (n,) finite, with the central percentile interval of
    `n_bootstrap` resamples with replacement: replicate b uses the b-th row of
    `np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))` (drawn in blocks of
    rows, which gives the same numbers). No values: NaN; n_bootstrap 0: no interval (NaN)."""
    check_confidence(confidence)
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError("values must be a 1-d array of finite numbers")
    n = x.size
    if n == 0:
        return Location(np.nan, np.nan, np.nan, 0)
    reduce = np.median if statistic == "median" else np.mean
    value = float(reduce(x))
    if n_bootstrap == 0:
        return Location(value, np.nan, np.nan, n)
    rng = as_generator(seed)
    per_block = max(1, block_elements // n)
    replicates = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, per_block):
        stop = min(n_bootstrap, start + per_block)
        replicates[start:stop] = reduce(x[rng.integers(0, n, size=(stop - start, n))], axis=1)
    low, high = percentile_interval(replicates, confidence)
    return Location(value, float(low), float(high), n)
