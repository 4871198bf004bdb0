"""The rules of the predicate kinds (laminae.claims.kinds): a claim and a run's measurements ->
a verdict, with the numbers that decided it.

    >>> outcome = evaluate(claim, {"cosine": Series(...)}, n_layers=36)
    >>> outcome.verdict, outcome.measured, outcome.reason
    ('fails', 'cosine -0.081 to 0.119 at layers 1-4 of 6', 'outside at layers 2 (-0.081 [-0.09, -0.073]), ...')

Verdicts:
- `holds`: the run's data show the claim, its uncertainty included;
- `fails`: the run's data contradict it, its uncertainty included;
- `undecided`: the run can be asked, but its uncertainty straddles a threshold (an interval
  across the edge of a range, a trend in the stated direction but not significant, bootstrap
  support between the two cut-offs);
- `not applicable`: the run cannot be asked (the measurement is missing, the depth band holds no
  layer, too few layers for the test to ever reach its alpha, no value of a group).

Every rule uses the run's uncertainty where it has one: a Series' interval (`Series.bounds()`:
the interval where finite, else the value), a sample's cluster bootstrap. Exact definitions, and
why each tolerance: docs/EXPERIMENTS.md, "Claims".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from laminae.claims.kinds import depth_layers, layers_text, named, normalised
from laminae.series import Sample, Series

HOLDS, FAILS, UNDECIDED, NOT_APPLICABLE = "holds", "fails", "undecided", "not applicable"
VERDICTS = (HOLDS, FAILS, UNDECIDED, NOT_APPLICABLE)
KDE_BINS = 512                  # grid of the binned kernel density estimate
MAX_LISTED = 3                  # layers named in a reason before "..."


@dataclass(frozen=True)
class Outcome:
    """A claim's verdict on one run."""

    verdict: str
    measured: str               # the headline numbers
    reason: str                 # the numbers that decided it (or why it cannot be asked)
    layers: tuple[int, ...] = ()   # the layers the claim asked


def evaluate(claim: Mapping[str, Any], measurements: Mapping[str, Series | Sample], n_layers: int) -> Outcome:
    """The verdict of `claim` (a config mapping) on `measurements` of an `n_layers` model."""
    c = normalised(claim)
    layers = tuple(depth_layers(c["depth"], n_layers))
    missing = [name for _, name, _ in named(c) if name not in measurements]
    if missing:
        return Outcome(NOT_APPLICABLE, "", f"this run has no {', '.join(missing)} (see the experiment's settings)", layers)
    if not layers:
        return Outcome(NOT_APPLICABLE, "", f"no layer of {n_layers} at depth {c['depth'][0]:g}-{c['depth'][1]:g}")
    rule = _RULES[c["kind"]]
    outcome = rule(c, measurements, list(layers))
    return Outcome(outcome.verdict, outcome.measured, outcome.reason, layers)


def combine(verdicts: Sequence[str]) -> str:
    """One verdict for a claim over several series: fails if any fails, else undecided if any
    is, else not applicable if any is, else holds."""
    for verdict in (FAILS, UNDECIDED, NOT_APPLICABLE):
        if verdict in verdicts:
            return verdict
    return HOLDS


# ----------------------------------------------------------------------------------- helpers
def num(value: float) -> str:
    """A number for a report: 3 significant digits, no exponent for ordinary sizes."""
    if value is None or not math.isfinite(value):
        return "nan"
    return f"{value:.3g}"


def _label(name: str, series: Series) -> str:
    return series.label or name


def _listed(layers: Sequence[int], describe) -> str:
    shown = ", ".join(describe(layer) for layer in layers[:MAX_LISTED])
    return shown + (f", ... ({len(layers)} layers)" if len(layers) > MAX_LISTED else "")


def _point(series: Series, layer: int) -> str:
    """`0.83 [0.79, 0.87]` or `0.83` (no interval at that layer)."""
    low, high = series.bounds()
    value = series.values[layer]
    if low[layer] == high[layer] == value:
        return num(value)
    return f"{num(value)} [{num(low[layer])}, {num(high[layer])}]"


def _finite_layers(series: Sequence[Series], layers: Sequence[int]) -> list[int]:
    """The layers where every series has a finite value and finite bounds."""
    out = []
    for layer in layers:
        if all(np.isfinite(s.values[layer]) and all(np.isfinite(b[layer]) for b in s.bounds()) for s in series):
            out.append(layer)
    return out


def _fraction_verdict(n_yes: int, n_no: int, n: int, min_fraction: float) -> str:
    """holds when the established layers reach min_fraction of n; fails when the contradicted
    ones leave fewer than that possible; else undecided."""
    if n_yes >= min_fraction * n - 1e-9:
        return HOLDS
    if n - n_no < min_fraction * n - 1e-9:
        return FAILS
    return UNDECIDED


def _interval_words(series: Series) -> str:
    return series.interval if series.has_interval else "no interval: point values"


# ------------------------------------------------------------------------- within and near
def _range_rule(c: dict[str, Any], measurements: Mapping[str, Any], layers: list[int], low: float | None,
                high: float | None, tolerance: float) -> Outcome:
    """Each layer: inside when its whole interval lies in [low - tol, high + tol], outside when
    the interval lies wholly beyond it, else straddling. The claim holds when the inside layers
    are at least `min_fraction` of the band's layers, fails when the outside ones leave fewer
    than that possible."""
    bottom = -math.inf if low is None else low - tolerance
    top = math.inf if high is None else high + tolerance
    verdicts, measured, reasons = [], [], []
    for name in c["series"]:
        series = measurements[name]
        use = _finite_layers([series], layers)
        if not use:
            verdicts.append(NOT_APPLICABLE)
            reasons.append(f"{name}: no finite value at the band's layers")
            continue
        lo, hi = series.bounds()
        inside = [l for l in use if lo[l] >= bottom and hi[l] <= top]
        outside = [l for l in use if hi[l] < bottom or lo[l] > top]
        straddle = [l for l in use if l not in inside and l not in outside]
        verdict = _fraction_verdict(len(inside), len(outside), len(use), c["min_fraction"])
        verdicts.append(verdict)
        values = series.values[use]
        spread = num(values[0]) if values.min() == values.max() else f"{num(values.min())} to {num(values.max())}"
        measured.append(f"{_label(name, series)} {spread}")
        parts = [f"{len(inside)} of {len(use)} layers inside ({_interval_words(series)})"]
        if outside:
            parts.append("outside at " + _listed(outside, lambda l: f"{l} ({_point(series, l)})"))
        if straddle:
            parts.append("straddling at " + _listed(straddle, lambda l: f"{l} ({_point(series, l)})"))
        reasons.append(f"{name}: " + "; ".join(parts))
    return Outcome(combine(verdicts), "; ".join(measured), " | ".join(reasons))


def _within(c, measurements, layers) -> Outcome:
    low, high = c["range"]
    return _range_rule(c, measurements, layers, low, high, c["tolerance"])


def _near(c, measurements, layers) -> Outcome:
    return _range_rule(c, measurements, layers, c["value"], c["value"], c["tolerance"])


# ------------------------------------------------------------------------------------ trend
def _trend(c, measurements, layers) -> Outcome:
    """Kendall's tau between layer index and value over the band's layers with a value; the
    one-sided p-value in the stated direction (exact for small bands without ties). holds: p <=
    alpha; fails: tau not in the stated direction (<= 0 for increasing, >= 0 for decreasing);
    undecided: in the stated direction but p > alpha. Not applicable when even a perfectly
    ordered band could not reach alpha (1 / n! > alpha: fewer than 4 layers at alpha 0.05)."""
    from scipy.stats import kendalltau

    sign = 1 if c["direction"] == "increasing" else -1
    alternative = "greater" if sign > 0 else "less"
    verdicts, measured, reasons = [], [], []
    for name in c["series"]:
        series = measurements[name]
        use = [l for l in layers if np.isfinite(series.values[l])]
        n = len(use)
        if n < 2 or 1 / math.factorial(n) > c["alpha"]:
            verdicts.append(NOT_APPLICABLE)
            reasons.append(f"{name}: {n} layer(s) in the band: even a perfect order gives p = 1/{n}! = "
                           f"{num(1 / math.factorial(max(n, 1)))} > alpha {c['alpha']:g}")
            continue
        values = series.values[use]
        if np.ptp(values) == 0:
            verdicts.append(FAILS)
            reasons.append(f"{name}: constant over the band ({num(values[0])})")
            continue
        tau, p = kendalltau(np.asarray(use), values, alternative=alternative)
        if p <= c["alpha"]:
            verdict = HOLDS
        elif sign * tau <= 0:
            verdict = FAILS
        else:
            verdict = UNDECIDED
        verdicts.append(verdict)
        measured.append(f"{_label(name, series)} {num(values[0])} (layer {use[0]}) -> {num(values[-1])} "
                        f"(layer {use[-1]}), tau {num(tau)}")
        reasons.append(f"{name}: tau {num(tau)}, one-sided p {num(p)} over {n} layers (alpha {c['alpha']:g})")
    return Outcome(combine(verdicts), "; ".join(measured), " | ".join(reasons))


# ---------------------------------------------------------------------------------- greater
def _greater(c, measurements, layers) -> Outcome:
    """Each layer: A above B when A's lower bound exceeds B's upper bound + margin (and, with
    `alpha`, A's own q-value is below alpha: A is significant there), not above when A's upper
    bound is at most B's lower bound + margin, else undecided. Per B: holds when the above layers
    reach min_fraction of the band's layers with both values; fails when the layers not above
    leave fewer than that possible."""
    a = measurements[c["series"]]
    a_lo, a_hi = a.bounds()
    margin = c["margin"]
    if c["alpha"] is not None and a.q_value is None:
        return Outcome(NOT_APPLICABLE, "", f"{c['series']} has no q-values to test against alpha {c['alpha']:g}")
    significant = (np.ones(a.n_layers, dtype=bool) if c["alpha"] is None
                   else np.nan_to_num(a.q_value, nan=1.0) < c["alpha"])
    verdicts, measured, reasons = [], [], []
    for name in c["than"]:
        b = measurements[name]
        use = _finite_layers([a, b], layers)
        if not use:
            verdicts.append(NOT_APPLICABLE)
            reasons.append(f"{c['series']} vs {name}: no layer with both values")
            continue
        b_lo, b_hi = b.bounds()
        above = [l for l in use if a_lo[l] > b_hi[l] + margin and significant[l]]
        not_above = [l for l in use if a_hi[l] <= b_lo[l] + margin]
        verdicts.append(_fraction_verdict(len(above), len(not_above), len(use), c["min_fraction"]))
        difference = a.values[use] - b.values[use]
        measured.append(f"{c['series']} - {name} {num(difference.min())} to {num(difference.max())}")
        part = f"{c['series']} > {name} at {len(above)} of {len(use)} layers"
        unproven = [l for l in use if a_lo[l] > b_hi[l] + margin and not significant[l]]
        if unproven:
            part += f" (and above but not significant, q >= {c['alpha']:g}, at {layers_text(unproven, a.n_layers)})"
        if not_above:
            part += "; not above at " + _listed(not_above, lambda l: f"{l} ({_point(a, l)} vs {_point(b, l)})")
        reasons.append(part)
    return Outcome(combine(verdicts), "; ".join(measured), " | ".join(reasons))


# -------------------------------------------------------------------------------- sign flip
def _sign_flip(c, measurements, layers) -> Outcome:
    """Each layer: the flip is shown when `from`'s interval lies wholly on the side of 0 of the
    first reported value and `to`'s wholly on the side of the second; ruled out when either
    interval lies wholly on the wrong side (or touches 0 from it); else undecided. holds: at
    least min_layers layers show it; fails: fewer than min_layers layers could; reversed flips
    (both point values on the opposite sides) are reported."""
    source, target = measurements[c["from"]], measurements[c["to"]]
    first, second = c["values"]
    use = _finite_layers([source, target], layers)
    if len(use) < c["min_layers"]:
        return Outcome(NOT_APPLICABLE, "", f"{len(use)} layer(s) with both values; {c['min_layers']} needed")
    s_lo, s_hi = source.bounds()
    t_lo, t_hi = target.bounds()

    def shown_on(lo, hi, positive):
        return lo > 0 if positive else hi < 0

    def ruled_out(lo, hi, positive):
        return hi <= 0 if positive else lo >= 0

    shown = [l for l in use if shown_on(s_lo[l], s_hi[l], first > 0) and shown_on(t_lo[l], t_hi[l], second > 0)]
    out = [l for l in use if ruled_out(s_lo[l], s_hi[l], first > 0) or ruled_out(t_lo[l], t_hi[l], second > 0)]
    reversed_ = [l for l in use if (source.values[l] > 0) != (first > 0) and source.values[l] != 0
                 and (target.values[l] > 0) != (second > 0) and target.values[l] != 0]
    if len(shown) >= c["min_layers"]:
        verdict = HOLDS
    elif len(use) - len(out) < c["min_layers"]:
        verdict = FAILS
    else:
        verdict = UNDECIDED
    best = max(use, key=lambda l: (l in shown, source.values[l] * np.sign(first) + target.values[l] * np.sign(second)))
    measured = (f"layer {best}: {c['from']} {_point(source, best)} -> {c['to']} {_point(target, best)}")
    parts = [f"flip shown at {len(shown)} of {len(use)} layers" + (f" ({layers_text(shown, source.n_layers)})"
                                                                    if shown else ""),
             f"ruled out at {len(out)}", f"intervals: {_interval_words(source)}"]
    if reversed_:
        parts.append("reversed signs (point values) at " + _listed(
            reversed_, lambda l: f"{l} ({num(source.values[l])} -> {num(target.values[l])})"))
    return Outcome(verdict, measured, "; ".join(parts))


# ----------------------------------------------------------------------------- distributions
def silverman_bandwidth(values: np.ndarray) -> float:
    """0.9 min(SD, IQR / 1.34) n^(-1/5) (Silverman 1986), or a small positive width for a
    degenerate sample."""
    n = values.size
    sd = float(values.std(ddof=1)) if n > 1 else 0.0
    q75, q25 = np.percentile(values, [75, 25])
    spread = min(sd, (q75 - q25) / 1.34) or sd
    if spread <= 0:
        spread = max(abs(float(values.mean())), 1.0) * 1e-3
    return 0.9 * spread * n ** -0.2


@dataclass(frozen=True)
class DensityGrid:
    """A binned Gaussian kernel density estimate on a fixed grid: values are binned (with
    weights), then convolved with the kernel sampled at the grid spacing."""

    edges: np.ndarray
    kernel: np.ndarray

    @classmethod
    def for_values(cls, values: np.ndarray, bandwidth: float, bins: int = KDE_BINS) -> "DensityGrid":
        low, high = float(values.min()) - 3 * bandwidth, float(values.max()) + 3 * bandwidth
        edges = np.linspace(low, high, bins + 1)
        step = edges[1] - edges[0]
        half = min(bins, int(math.ceil(4 * bandwidth / step)))
        offsets = np.arange(-half, half + 1) * step
        return cls(edges=edges, kernel=np.exp(-0.5 * (offsets / bandwidth) ** 2))

    @property
    def centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def index(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, self.edges.size - 2)

    def density(self, bin_index: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        counts = np.bincount(bin_index, weights=weights, minlength=self.edges.size - 1)
        return np.convolve(counts, self.kernel, mode="same")


def count_modes(density: np.ndarray, min_height: float, min_dip: float) -> int:
    """Local maxima of `density` at least `min_height` of the highest, where two neighbouring
    maxima count as two modes only if the density between them falls at least `min_dip` (a
    fraction) below the lower of the two; otherwise the lower is a shoulder of the higher."""
    top = float(density.max())
    if top <= 0:
        return 0
    d = np.concatenate([[-np.inf], density, [-np.inf]])
    rising = d[1:-1] > d[:-2]
    not_falling_next = d[1:-1] >= d[2:]
    peaks = [int(i) for i in np.flatnonzero(rising & not_falling_next) if density[i] >= min_height * top]
    modes: list[int] = []
    for peak in peaks:
        if modes:
            previous = modes[-1]
            valley = float(density[previous:peak + 1].min())
            if valley > (1 - min_dip) * min(density[previous], density[peak]):
                if density[peak] > density[previous]:
                    modes[-1] = peak          # the higher of the two stays
                continue
        modes.append(peak)
    return len(modes)


def weighted_quantiles(sorted_values: np.ndarray, sorted_weights: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """The inverse of the weighted empirical CDF: for each q the smallest value whose cumulative
    weight reaches q x the total weight."""
    cumulative = np.cumsum(sorted_weights)
    targets = np.asarray(quantiles) * cumulative[-1]
    index = np.minimum(np.searchsorted(cumulative, targets - 1e-9 * cumulative[-1], side="left"), sorted_values.size - 1)
    return sorted_values[index]


def _cluster_weights(cluster: np.ndarray, n_bootstrap: int, seed: int):
    """Yield, per bootstrap replicate, each value's weight: how many times its cluster (the
    resampling unit, e.g. its token) was drawn when the clusters are resampled with replacement."""
    _, codes = np.unique(cluster, return_inverse=True)
    n_clusters = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        counts = np.bincount(rng.integers(0, n_clusters, size=n_clusters), minlength=n_clusters)
        yield counts[codes].astype(np.float64)


def _interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return math.nan, math.nan
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def _centred_right_tail(c, measurements, layers) -> Outcome:
    """Over the sample's values at the band's layers: the peak (mode of a binned Gaussian KDE,
    Silverman's bandwidth) and Kelly's skewness (q + q' - 2 median) / (q - q'), q and q' the
    `quantile` and 1 - `quantile` quantiles (> 0: the right tail is longer), each with a
    percentile CI from `n_bootstrap` resamples of the sample's clusters. Centred: holds when the
    mode's CI lies inside centre +- tolerance, fails when it lies wholly outside; right tail:
    holds when the skewness CI lies above 0, fails when it lies at or below 0. The claim holds
    when both hold, fails when either fails, else is undecided."""
    sample = measurements[c["sample"]].in_layers(layers)
    n_clusters = np.unique(sample.cluster).size
    if sample.values.size < 10 or n_clusters < 2:
        return Outcome(NOT_APPLICABLE, "", f"{sample.values.size} values in {n_clusters} resampling unit(s) at the "
                                           "band's layers; at least 10 values in 2 units needed")
    grid = DensityGrid.for_values(sample.values, silverman_bandwidth(sample.values))
    bins = grid.index(sample.values)
    order = np.argsort(sample.values, kind="stable")
    sorted_values = sample.values[order]
    q = c["quantile"]

    def statistics(weights: np.ndarray) -> tuple[float, float]:
        mode = float(grid.centres[int(np.argmax(grid.density(bins, weights)))])
        low, median, high = weighted_quantiles(sorted_values, weights[order], [1 - q, 0.5, q])
        kelly = (high + low - 2 * median) / (high - low) if high > low else math.nan
        return mode, float(kelly)

    mode, kelly = statistics(np.ones(sample.values.size))
    replicates = [statistics(w) for w in _cluster_weights(sample.cluster, c["n_bootstrap"], c["bootstrap_seed"])]
    if replicates:
        mode_ci = _interval([r[0] for r in replicates], c["confidence"])
        kelly_ci = _interval([r[1] for r in replicates], c["confidence"])
    else:
        mode_ci, kelly_ci = (mode, mode), (kelly, kelly)
    bottom, top = c["centre"] - c["tolerance"], c["centre"] + c["tolerance"]
    centred = HOLDS if bottom <= mode_ci[0] and mode_ci[1] <= top else (
        FAILS if mode_ci[1] < bottom or mode_ci[0] > top else UNDECIDED)
    tail = HOLDS if kelly_ci[0] > 0 else (FAILS if kelly_ci[1] <= 0 else UNDECIDED)
    if not math.isfinite(kelly):
        tail = NOT_APPLICABLE
    verdict = combine([centred, tail])
    ci = f"{100 * c['confidence']:g}% CI" if replicates else "no bootstrap: point values"
    measured = f"mode {num(mode)}, Kelly skewness {num(kelly)} ({sample.values.size} values)"
    reason = (f"centred {centred}: mode {num(mode)} [{num(mode_ci[0])}, {num(mode_ci[1])}] vs [{num(bottom)}, "
              f"{num(top)}]; right tail {tail}: skewness {num(kelly)} [{num(kelly_ci[0])}, {num(kelly_ci[1])}]; "
              f"{ci}, {c['n_bootstrap']} resamples of {n_clusters} units")
    return Outcome(verdict, measured, reason)


def _bimodal_from_group(c, measurements, layers) -> Outcome:
    """Over the sample's values at the band's layers, the modes of a binned Gaussian KDE
    (Silverman's bandwidth from all the values, the same grid and bandwidth with and without
    the group; `count_modes`). The group makes the distribution bimodal when it has >= 2 modes
    with the group and fewer without. Support: the fraction of `n_bootstrap` cluster resamples
    where that is so. holds: support >= `support`; fails: support <= 1 - `support`; else
    undecided (with n_bootstrap 0, the point estimate decides)."""
    sample = measurements[c["sample"]].in_layers(layers)
    if sample.group is None:
        return Outcome(NOT_APPLICABLE, "", f"{c['sample']} has no group")
    in_group = int(sample.group.sum())
    if in_group == 0 or sample.values.size - in_group < 2:
        return Outcome(NOT_APPLICABLE, "", f"{in_group} of {sample.values.size} values in the group "
                                           f"({sample.group_label}) at the band's layers")
    grid = DensityGrid.for_values(sample.values, silverman_bandwidth(sample.values))
    bins = grid.index(sample.values)
    outside = (~sample.group).astype(np.float64)

    def modes(weights: np.ndarray) -> tuple[int, int]:
        return (count_modes(grid.density(bins, weights), c["min_height"], c["min_dip"]),
                count_modes(grid.density(bins, weights * outside), c["min_height"], c["min_dip"]))

    def shown(pair: tuple[int, int]) -> bool:
        return pair[0] >= 2 and pair[1] < pair[0]

    with_group, without = modes(np.ones(sample.values.size))
    replicates = [shown(modes(w)) for w in _cluster_weights(sample.cluster, c["n_bootstrap"], c["bootstrap_seed"])]
    support = float(np.mean(replicates)) if replicates else float(shown((with_group, without)))
    if support >= c["support"]:
        verdict = HOLDS
    elif support <= 1 - c["support"]:
        verdict = FAILS
    else:
        verdict = UNDECIDED
    share = f"{in_group} of {sample.values.size} values ({100 * in_group / sample.values.size:.1f}%)"
    measured = f"{with_group} mode(s) with the group, {without} without; group {share}"
    basis = (f"in {100 * support:.0f}% of {len(replicates)} bootstrap replicates (units resampled)" if replicates
             else "point estimate (no bootstrap)")
    reason = f"group: {sample.group_label}; two modes with it and fewer without {basis}"
    return Outcome(verdict, measured, reason)


_RULES = {"within": _within, "near": _near, "trend": _trend, "greater": _greater, "sign_flip": _sign_flip,
          "centred_right_tail": _centred_right_tail, "bimodal_from_group": _bimodal_from_group}
