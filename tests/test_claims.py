"""Claims: the predicate rules near their thresholds, against independent computations (exact
Kendall p by enumeration, NumPy quantiles, SciPy's KDE, the bimodality of a two-normal mixture);
each experiment's default claims on metric tables built so that they hold, and so that they fail;
the one-line config errors; and, end to end through Snakemake on tiny-gpt2, the claims stage,
its caching, its report and a sweep's claims matrix."""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from laminae.claims import evaluate_claims, references
from laminae.claims.kinds import depth_layers, seed_layer_range
from laminae.claims.predicates import (FAILS, HOLDS, NOT_APPLICABLE, UNDECIDED, count_modes, evaluate,
                                       silverman_bandwidth, weighted_quantiles)
from laminae.claims.report import read_claims_table, summary_text
from laminae.config import load_runs
from laminae.errors import ConfigError
from laminae.registry import discover
from laminae.series import Sample, Series
from laminae.stages.claims import measurements_of
from workflow_helpers import PROJECT_ROOT, scheduled_rules, snakemake

REGISTRY = discover()


def series(values, half_width=None, **extra) -> Series:
    values = np.asarray(values, dtype=float)
    if half_width is None:
        return Series(values, **extra)
    half = np.broadcast_to(np.asarray(half_width, dtype=float), values.shape)
    return Series(values, values - half, values + half, interval="test interval", **extra)


def claim(kind: str, **params) -> dict:
    return {"id": "c", "seed": "test", "says": "test claim", "kind": kind, **params}


def verdict(c: dict, measurements: dict, n_layers: int | None = None) -> str:
    n = n_layers or next(m.n_layers for m in measurements.values())
    return evaluate(c, measurements, n).verdict


# ----------------------------------------------------------------------------- within, near
RSA = claim("within", series=["rsa"], range=[0.84, 0.96], tolerance=0.05)   # widened: [0.79, 1.01]


@pytest.mark.parametrize("low,high,expected", [
    (0.795, 0.83, HOLDS),          # the whole interval inside [0.79, 1.01]
    (0.785, 0.83, UNDECIDED),      # straddles the lower edge 0.79
    (0.75, 0.789, FAILS),          # wholly below it
    (0.98, 1.005, HOLDS),
    (1.0, 1.02, UNDECIDED),
])
def test_within_judges_the_interval_against_the_widened_range(low, high, expected):
    values = np.full(6, 0.9)
    lows, highs = values - 0.02, values + 0.02
    lows[3], highs[3], values[3] = low, high, (low + high) / 2
    measured = {"rsa": Series(values, lows, highs, interval="95% CI")}
    assert verdict(RSA, measured) == expected


def test_within_point_values_without_an_interval_and_min_fraction():
    near = claim("near", series=["cos"], value=0.0, tolerance=0.05)
    assert verdict(near, {"cos": series([0.0, 0.0499, -0.0499])}) == HOLDS
    assert verdict(near, {"cos": series([0.0, 0.0501, -0.0499])}) == FAILS
    # 5 of 6 layers inside: min_fraction 0.8 needs 4.8 of 6
    values = [0.0, 0.0, 0.0, 0.0, 0.0, 0.2]
    assert verdict({**near, "min_fraction": 0.8}, {"cos": series(values)}) == HOLDS
    assert verdict({**near, "min_fraction": 0.9}, {"cos": series(values)}) == FAILS
    # a layer straddling, a layer outside, min_fraction 0.8: 4 inside < 4.8, but 5 could still be
    values = [0.0, 0.0, 0.0, 0.0, 0.06, 0.2]
    assert verdict({**near, "min_fraction": 0.8}, {"cos": series(values, [0.01] * 6)}) == UNDECIDED


def test_a_depth_band_selects_layers_by_relative_depth():
    near = claim("near", series=["cos"], value=0.0, tolerance=0.05, depth=[0.171, 0.829])
    values = np.zeros(36)
    values[[0, 5, 30, 35]] = 0.5                                  # outside the band: irrelevant
    assert verdict(near, {"cos": series(values)}) == HOLDS
    values[6] = 0.5                                               # seed layer 6 is inside
    assert verdict(near, {"cos": series(values)}) == FAILS
    outcome = evaluate(near, {"cos": series(np.zeros(6))}, 6)
    assert outcome.layers == (1, 2, 3, 4)
    assert evaluate(claim("near", series=["cos"], value=0, tolerance=1, depth=[0.4, 0.6]),
                    {"cos": series(np.zeros(4))}, 4).verdict == NOT_APPLICABLE    # no layer at 0.4-0.6 of 4


def test_a_missing_series_is_not_applicable():
    outcome = evaluate(RSA, {"other": series([1.0, 1.0])}, 2)
    assert outcome.verdict == NOT_APPLICABLE and "rsa" in outcome.reason


# -------------------------------------------------------------------------------------- trend
def kendall_exact_p(values: np.ndarray, direction: str) -> float:
    """One-sided p of Kendall's tau between layer order and values, by enumerating every
    ordering of the values (no ties)."""
    def tau(y):
        n = len(y)
        concordant = sum(np.sign(y[j] - y[i]) for i in range(n) for j in range(i + 1, n))
        return concordant / (n * (n - 1) / 2)

    observed = tau(values)
    taus = np.array([tau(np.array(p)) for p in itertools.permutations(values)])
    extreme = taus >= observed - 1e-12 if direction == "increasing" else taus <= observed + 1e-12
    return float(extreme.mean())


@pytest.mark.parametrize("values", [
    [5, 4, 3, 2, 1], [5, 4, 3, 1, 2], [5, 3, 4, 1, 2], [4, 5, 3, 2, 1, 0], [2, 4, 3, 1], [3, 2, 1, 0],
    [1, 2, 3, 4, 5], [3, 1, 2, 5, 4, 6],
])
def test_trend_verdict_follows_the_exact_kendall_p(values):
    values = np.asarray(values, dtype=float)
    for direction in ("decreasing", "increasing"):
        p = kendall_exact_p(values, direction)
        leans = kendall_exact_p(values, direction) < kendall_exact_p(values, "increasing" if direction == "decreasing"
                                                                     else "decreasing")
        expected = HOLDS if p <= 0.05 else (UNDECIDED if leans else FAILS)
        got = verdict(claim("trend", series=["s"], direction=direction), {"s": series(values)})
        assert got == expected, (values, direction, p)


def test_trend_is_not_applicable_when_no_order_could_reach_alpha():
    decreasing = {"s": series([3.0, 2.0, 1.0])}                      # 1/3! = 0.17 > 0.05
    assert verdict(claim("trend", series=["s"], direction="decreasing"), decreasing) == NOT_APPLICABLE
    assert verdict(claim("trend", series=["s"], direction="decreasing", alpha=0.2), decreasing) == HOLDS
    # the seed's "after layer 18 of 36" on a 6-layer model: layers 3-5 only
    smile = claim("trend", series=["s"], direction="increasing", depth=[0.514, 1.0])
    assert evaluate(smile, {"s": series(np.arange(6.0))}, 6).verdict == NOT_APPLICABLE
    assert evaluate(smile, {"s": series(np.arange(36.0))}, 36).verdict == HOLDS


# ------------------------------------------------------------------------------------ greater
def test_greater_needs_separated_intervals_beyond_the_margin():
    b = np.linspace(1.0, 2.0, 6)
    c = claim("greater", series="a", than=["b"], margin=0.01)
    assert verdict(c, {"a": series(b + 0.011), "b": series(b)}) == HOLDS
    assert verdict(c, {"a": series(b + 0.009), "b": series(b)}) == FAILS
    # with intervals: 0.1 apart, half-widths 0.04 each: separated; 0.06 each: overlapping
    assert verdict({**c, "margin": 0}, {"a": series(b + 0.1, 0.04), "b": series(b, 0.04)}) == HOLDS
    assert verdict({**c, "margin": 0}, {"a": series(b + 0.1, 0.06), "b": series(b, 0.06)}) == UNDECIDED


def test_greater_with_alpha_counts_only_layers_where_the_series_is_significant():
    b = np.ones(6)
    q = np.array([0.01, 0.01, 0.2, 0.2, 0.2, 0.2])
    c = claim("greater", series="a", than=["b"], min_fraction=0.5, alpha=0.05)
    assert verdict(c, {"a": series(b + 1, q_value=q), "b": series(b)}) == UNDECIDED   # 2 of 6 < 3
    q[2] = 0.04
    assert verdict(c, {"a": series(b + 1, q_value=q), "b": series(b)}) == HOLDS       # 3 of 6
    assert verdict({**c, "alpha": None}, {"a": series(b + 1, q_value=q * 10), "b": series(b)}) == HOLDS
    assert verdict(c, {"a": series(b + 1), "b": series(b)}) == NOT_APPLICABLE         # no q-values


# ---------------------------------------------------------------------------------- sign flip
FLIP = claim("sign_flip", **{"from": "all", "to": "without", "values": [0.6, -0.2]})


def test_sign_flip_needs_both_intervals_on_the_reported_sides_of_zero():
    before = series(np.full(4, 0.6), 0.1)
    after = np.full(4, 0.5)
    after_low, after_high = after - 0.1, after + 0.1
    measured = lambda: {"all": before, "without": Series(after, after_low, after_high, interval="CI")}  # noqa: E731
    assert verdict(FLIP, measured()) == FAILS
    after[2], after_low[2], after_high[2] = -0.2, -0.3, -0.01
    assert verdict(FLIP, measured()) == HOLDS
    after_high[2] = 0.01                                          # touches 0 from below: not shown
    assert verdict(FLIP, measured()) == UNDECIDED
    after_low[2] = 0.0                                            # the interval at or above 0: ruled out
    assert verdict(FLIP, measured()) == FAILS


def test_sign_flip_reports_a_flip_in_the_other_direction():
    outcome = evaluate(FLIP, {"all": series([-0.2, 0.3], 0.05), "without": series([0.6, 0.3], 0.05)}, 2)
    assert outcome.verdict == FAILS and "reversed signs" in outcome.reason and "0 (-0.2 -> 0.6)" in outcome.reason


# ----------------------------------------------------------------------------- distributions
def right_skewed(rng, tokens: int, layers: int, shift: float = 0.0, mirror: bool = False) -> Sample:
    """Gamma(2, 0.05) - 0.05: mode exactly 0, a long right tail; per token and layer."""
    values = rng.gamma(2.0, 0.05, size=(layers, tokens)) - 0.05
    values = (-values if mirror else values) + shift
    layer, token = np.meshgrid(np.arange(layers), np.arange(tokens), indexing="ij")
    return Sample(values.ravel(), layer.ravel(), token.ravel(), what="test", n_layers=layers)


CENTRED = claim("centred_right_tail", sample="x", tolerance=0.05, n_bootstrap=200)


def test_centred_right_tail_holds_for_a_right_skewed_peak_at_zero_and_fails_otherwise():
    rng = np.random.default_rng(1)
    assert verdict(CENTRED, {"x": right_skewed(rng, 300, 6)}) == HOLDS
    assert verdict(CENTRED, {"x": right_skewed(rng, 300, 6, shift=0.15)}) == FAILS         # peak at 0.15
    assert verdict(CENTRED, {"x": right_skewed(rng, 300, 6, mirror=True)}) == FAILS        # a left tail
    symmetric = rng.normal(0, 0.05, size=(6, 300))
    layer, token = np.meshgrid(np.arange(6), np.arange(300), indexing="ij")
    assert verdict(CENTRED, {"x": Sample(symmetric.ravel(), layer.ravel(), token.ravel())}) != HOLDS


def test_the_peak_and_the_skewness_match_scipy_and_numpy():
    from scipy.stats import gaussian_kde

    from laminae.claims.predicates import DensityGrid

    values = right_skewed(np.random.default_rng(2), 400, 3).values
    bandwidth = silverman_bandwidth(values)
    grid = DensityGrid.for_values(values, bandwidth)
    ours = grid.centres[np.argmax(grid.density(grid.index(values)))]
    kde = gaussian_kde(values, bw_method=bandwidth / values.std(ddof=1))
    fine = np.linspace(values.min(), values.max(), 20001)
    assert abs(ours - fine[np.argmax(kde(fine))]) < 2 * (grid.edges[1] - grid.edges[0])
    order = np.sort(values)
    np.testing.assert_array_equal(weighted_quantiles(order, np.ones(values.size), [0.1, 0.5, 0.9]),
                                  np.quantile(values, [0.1, 0.5, 0.9], method="inverted_cdf"))
    # integer weights are repeats
    weights = np.random.default_rng(3).integers(0, 4, values.size)
    np.testing.assert_array_equal(
        weighted_quantiles(values[np.argsort(values)], weights[np.argsort(values)].astype(float), [0.1, 0.5, 0.9]),
        np.quantile(np.repeat(values, weights), [0.1, 0.5, 0.9], method="inverted_cdf"))


def test_count_modes_agrees_with_the_bimodality_of_a_normal_mixture():
    """Two equal normals (sd 1) are bimodal exactly when their means are more than 2 apart."""
    x = np.linspace(-8, 12, 4001)

    def mixture(distance, weight=0.5):
        return (1 - weight) * np.exp(-0.5 * x**2) + weight * np.exp(-0.5 * (x - distance) ** 2)

    assert count_modes(mixture(1.8), 0.1, 0.001) == 1
    assert count_modes(mixture(2.2), 0.1, 0.001) == 2
    assert count_modes(mixture(2.2), 0.1, 0.1) == 1          # a dip under 10%: a shoulder, not a mode
    assert count_modes(mixture(6.0, 0.05), 0.1, 0.1) == 1    # the small peak is 5% of the large one
    assert count_modes(mixture(6.0, 0.05), 0.01, 0.1) == 2


def angles_sample(rng, windows: int, tokens: int, layers: int, first_mean: float) -> Sample:
    """Sequential angles: other pairs ~ N(1.2, 0.12), first-token pairs ~ N(first_mean, 0.08)."""
    pairs = windows * (tokens - 1)
    first = np.zeros(pairs, dtype=bool)
    first[:: tokens - 1] = True
    values = rng.normal(1.2, 0.12, size=(layers, pairs))
    values[:, first] = rng.normal(first_mean, 0.08, size=(layers, int(first.sum())))
    layer, pair = np.meshgrid(np.arange(layers), np.arange(pairs), indexing="ij")
    return Sample(values.ravel(), layer.ravel(), pair.ravel(), group=first[pair.ravel()],
                  group_label="first-token pairs", n_layers=layers)


BIMODAL = claim("bimodal_from_group", sample="x", n_bootstrap=100)


def test_bimodal_from_group_holds_when_the_group_makes_the_second_mode():
    rng = np.random.default_rng(4)
    assert verdict(BIMODAL, {"x": angles_sample(rng, windows=60, tokens=8, layers=4, first_mean=2.3)}) == HOLDS
    # first-token pairs like the others: one mode with and without them
    assert verdict(BIMODAL, {"x": angles_sample(rng, windows=60, tokens=8, layers=4, first_mean=1.2)}) == FAILS
    # one long window: one first-token pair per layer cannot make a mode
    assert verdict(BIMODAL, {"x": angles_sample(rng, windows=1, tokens=300, layers=4, first_mean=2.3)}) == FAILS
    plain = angles_sample(rng, windows=2, tokens=8, layers=2, first_mean=2.3)
    no_group = Sample(plain.values, plain.layer, plain.cluster, n_layers=2)
    assert verdict(BIMODAL, {"x": no_group}) == NOT_APPLICABLE


# -------------------------------------------------------------- the experiments' default claims
def default_claims(name: str) -> list[dict]:
    return yaml.safe_load((PROJECT_ROOT / "conf" / name / "default.yaml").read_text())["claims"]


def test_every_default_claim_uses_the_seed_layers_it_names():
    """The relative depth of each claim selects exactly the seed's layers of GPT-2 Large."""
    for name in ("qkv", "adjustments", "pathlength", "rotations"):
        for c in default_claims(name):
            if "seed_layers" in c:
                first, last, total = seed_layer_range(c["seed_layers"])
                naive = [l for l in range(total) if c["depth"][0] - 1e-9 <= l / (total - 1) <= c["depth"][1] + 1e-9]
                assert naive == list(range(first, last + 1)) == depth_layers(c["depth"], total), c["id"]


def verdicts_on(name: str, metrics_dir: Path, settings: dict | None = None) -> dict[str, str]:
    measured = measurements_of(REGISTRY[name], metrics_dir, settings or {})
    return {r.claim: r.verdict for r in evaluate_claims(default_claims(name), measured)}


def write_qkv(folder: Path, profiles: dict[str, np.ndarray], rsa_ci: dict[str, tuple], q: dict[str, np.ndarray]):
    from laminae.experiments.qkv.analysis import QkvRow, format_qkv_table

    rows = []
    for c in "qkv":
        for layer, value in enumerate(profiles[c]):
            rows.append(QkvRow(layer, c, "selectivity", float(value), p_value=float(q[c][layer]),
                               q_value=float(q[c][layer])))
    for pair, (values, half) in rsa_ci.items():
        for layer, value in enumerate(values):
            rows.append(QkvRow(layer, pair, "rsa", float(value), float(value - half[layer]), float(value + half[layer])))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qkv_laminar.tsv").write_text(format_qkv_table(rows))
    return folder


def qkv_course_like(n: int = 36):
    """Q and K falling with depth, V above them with a smile after relative depth 0.514."""
    depth = np.arange(n) / (n - 1)
    q = 2.0 - 0.8 * depth
    k = 1.9 - 0.7 * depth
    v = np.where(depth < 0.514, 2.6 - 1.0 * depth, 2.1 + 0.8 * (depth - 0.514))
    return {"q": q, "k": k, "v": v}


def test_qkv_claims_hold_on_a_course_like_table_and_fail_near_their_thresholds(tmp_path):
    n = 36
    significant = {c: np.full(n, 0.001) for c in "qkv"}
    rsa = {pair: (np.full(n, 0.9), np.full(n, 0.03)) for pair in ("q-k", "q-v", "k-v")}
    metrics = write_qkv(tmp_path / "holds", qkv_course_like(), rsa, significant)
    assert verdicts_on("qkv", metrics) == {"rsa_high": HOLDS, "qk_selectivity_falls": HOLDS,
                                           "v_more_selective": HOLDS, "v_smile": HOLDS}
    # one K-V layer just below the widened range (0.79), Q rising, V under Q and K, V flat late
    low = rsa["k-v"][0].copy()
    low[20] = 0.76                                                       # CI [0.73, 0.789]
    failing = {**rsa, "k-v": (low, np.where(np.arange(n) == 20, 0.029, 0.03))}
    profiles = qkv_course_like()
    profiles["q"] = profiles["q"][::-1]
    profiles["v"] = np.minimum(profiles["q"], profiles["k"]) - 0.01     # late: K's fall, so no smile
    metrics = write_qkv(tmp_path / "fails", profiles, failing, significant)
    assert verdicts_on("qkv", metrics) == {"rsa_high": FAILS, "qk_selectivity_falls": FAILS,
                                           "v_more_selective": FAILS, "v_smile": FAILS}
    # a 6-layer model: the smile's band holds 3 layers, too few for a trend at alpha 0.05
    six = write_qkv(tmp_path / "six", qkv_course_like(6), {p: (np.full(6, 0.9), np.full(6, 0.03)) for p in rsa},
                    {c: np.full(6, 0.001) for c in "qkv"})
    assert verdicts_on("qkv", six)["v_smile"] == NOT_APPLICABLE


def test_qkv_claims_on_a_component_the_run_left_out_are_not_applicable(tmp_path):
    n = 6
    profiles = {c: v for c, v in qkv_course_like(n).items()}
    metrics = write_qkv(tmp_path, profiles, {"q-k": (np.full(n, 0.9), np.full(n, 0.03))},
                        {c: np.full(n, 0.001) for c in "qkv"})
    assert verdicts_on("qkv", metrics)["rsa_high"] == NOT_APPLICABLE        # no q-v, k-v


def write_adjustments(folder: Path, means: np.ndarray, sem: np.ndarray, cosines: np.ndarray) -> Path:
    from laminae.experiments.adjustments.analysis import TABLE_COLUMNS
    from laminae.store import write_tsv

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"layer": l, "metric": "cosine", "value": m, "sem": s, "sd": s * 10, "n": cosines.shape[1]}
            for l, (m, s) in enumerate(zip(means, sem))]
    write_tsv(folder / "adjustments.tsv", rows, TABLE_COLUMNS)
    with h5py.File(folder / "adjustment_cosine.h5", "w") as handle:
        handle["cosine"] = cosines
        handle["included"] = np.ones(cosines.shape, dtype=bool)
    return folder


def test_adjustments_claims_hold_on_the_seed_profile_and_fail_just_past_the_tolerances(tmp_path):
    n = 36
    means = np.where((np.arange(n) <= 5) | (np.arange(n) >= 30), 0.15, 0.0)
    sem = np.full(n, 0.004)
    tokens = right_skewed(np.random.default_rng(5), 200, n).values.reshape(n, 200)
    assert verdicts_on("adjustments", write_adjustments(tmp_path / "holds", means, sem, tokens)) == {
        "middle_near_zero": HOLDS, "shoulder_first": HOLDS, "shoulder_last": HOLDS, "centred_right_tail": HOLDS}
    failing = means.copy()
    failing[10] = 0.0579                      # interval [0.05006, 0.0657]: wholly above 0.05
    failing[:6] = 0.0421                      # interval [0.0342, 0.04994]: wholly below 0.05
    failing[30:] = 0.2579                     # wholly above 0.25
    shifted = tokens + 0.2
    assert verdicts_on("adjustments", write_adjustments(tmp_path / "fails", failing, sem, shifted)) == {
        "middle_near_zero": FAILS, "shoulder_first": FAILS, "shoulder_last": FAILS, "centred_right_tail": FAILS}
    straddling = means.copy()
    straddling[10] = 0.052                    # interval [0.0442, 0.0598]
    assert verdicts_on("adjustments", write_adjustments(tmp_path / "straddles", straddling, sem, tokens))[
        "middle_near_zero"] == UNDECIDED


def write_pathlength(folder: Path, all_tokens: tuple, without_first: tuple, n: int = 36) -> Path:
    from laminae.experiments.pathlength.table import CORRELATIONS, MEANS, table_row, write_table

    rows = []
    for tokens, (value, half) in (("all", all_tokens), ("without_first", without_first)):
        for metric in CORRELATIONS:
            rows += [table_row(l, metric, tokens, value[l], 300, ci_low=value[l] - half, ci_high=value[l] + half)
                     for l in range(n)]
        for metric in MEANS:
            rows += [table_row(l, metric, tokens, 1.0, 300, sem=0.1) for l in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    write_table(folder / "pathlength.tsv", rows)
    return folder


def test_pathlength_claims_hold_with_the_course_flip_and_fail_without_it(tmp_path):
    n = 36
    before = np.full(n, 0.6)
    after = np.full(n, 0.5)
    after[3] = -0.2
    assert verdicts_on("pathlength", write_pathlength(tmp_path / "holds", (before, 0.1), (after, 0.1))) == {
        "first_token_flips_attn": HOLDS, "first_token_flips_mlp": HOLDS}
    after[3] = -0.09                          # interval [-0.19, 0.01]: not wholly below 0
    assert verdicts_on("pathlength", write_pathlength(tmp_path / "undecided", (before, 0.1), (after, 0.1))) == {
        "first_token_flips_attn": UNDECIDED, "first_token_flips_mlp": UNDECIDED}
    after[3] = 0.11                           # interval [0.01, 0.21]: ruled out
    assert verdicts_on("pathlength", write_pathlength(tmp_path / "fails", (before, 0.1), (after, 0.1))) == {
        "first_token_flips_attn": FAILS, "first_token_flips_mlp": FAILS}


def write_rotations(folder: Path, sample: Sample, windows: int, tokens: int) -> Path:
    from laminae.experiments.rotations.outputs import METRICS, AngleStats, write_rotation_table

    n_layers = sample.n_layers
    n_tokens = windows * tokens
    position = np.tile(np.arange(tokens), windows)
    has_next = position < tokens - 1
    first_pair = position == 0
    sequential = np.full((n_layers, n_tokens), np.nan)
    starts = np.flatnonzero(has_next)                          # pair p starts at token starts[p]
    sequential[sample.layer, starts[sample.cluster]] = sample.values
    folder.mkdir(parents=True, exist_ok=True)
    stats = AngleStats(*(np.full(n_layers, 1.0) for _ in range(4)), np.full(n_layers, n_tokens), np.zeros(n_layers, int))
    write_rotation_table(folder / "rotations.tsv", {metric: stats for metric in METRICS})
    with h5py.File(folder / "rotation_angles.h5", "w") as handle:
        for name in ("block_rotation", "attn_angle", "mlp_angle"):
            handle[name] = np.ones((n_layers, n_tokens))
        handle["sequential"] = sequential
        handle["has_next"], handle["first_pair"] = has_next, first_pair
        handle["window"], handle["position"] = np.repeat(np.arange(windows), tokens), position
        handle["token_id"] = np.zeros(n_tokens, dtype=int)
        group = handle.create_group("n_undefined")
        for metric in METRICS:
            group[metric] = np.zeros(n_layers, dtype=int)
    return folder


def test_rotations_claim_holds_when_first_token_pairs_make_a_second_mode(tmp_path):
    rng = np.random.default_rng(6)
    holds = angles_sample(rng, windows=60, tokens=8, layers=4, first_mean=2.3)
    assert verdicts_on("rotations", write_rotations(tmp_path / "holds", holds, 60, 8)) == {"first_token_bimodal": HOLDS}
    fails = angles_sample(rng, windows=2, tokens=200, layers=4, first_mean=2.3)
    assert verdicts_on("rotations", write_rotations(tmp_path / "fails", fails, 2, 200)) == {"first_token_bimodal": FAILS}


def test_the_summary_fits_one_screen_and_names_every_claim(tmp_path):
    n = 36
    metrics = write_qkv(tmp_path, qkv_course_like(), {p: (np.full(n, 0.9), np.full(n, 0.03))
                                                      for p in ("q-k", "q-v", "k-v")},
                        {c: np.full(n, 0.001) for c in "qkv"})
    results = evaluate_claims(default_claims("qkv"), measurements_of(REGISTRY["qkv"], metrics, {}))
    text = summary_text(results, "qkv")
    assert len(text.splitlines()) <= 45 and max(len(line) for line in text.splitlines()) <= 110
    assert all(c["id"] in text for c in default_claims("qkv")) and "4 hold" in text


# --------------------------------------------------------------------------------- config
TINY = ["model=tiny-gpt2"]


@pytest.mark.parametrize("override,key,expected", [
    ("qkv.claims.0.kind=wthin", "qkv.claims.0.kind", "one of ['within'"),
    ("qkv.claims.0.depth=[0.1,1.2]", "qkv.claims.0.depth.1", "a number <= 1"),
    ("adjustments.claims.0.depth=[0.9,0.1]", "adjustments.claims.0.depth", "low <= high"),
    ("qkv.claims.0.series=[rsa:q-k,rsa:q-x]", "qkv.claims.0.series.1", "one of qkv's layer measurements"),
    ("adjustments.claims.3.sample=cosine", "adjustments.claims.3.sample", "one of adjustments's samples"),
    ("+qkv.claims.0.threshold=3", "qkv.claims.0.threshold", "a known key"),
    ("qkv.claims.1.id=rsa_high", "qkv.claims.1.id", "an id no other claim of qkv has"),
    ("qkv.claims.1.id=Rsa", "qkv.claims.1.id", "lower case letters"),
    ("adjustments.claims.0.depth=[0.2,0.829]", "adjustments.claims.0.depth", "seed_layers '6-29 of 36'"),
    ("adjustments.claims.1.seed_layers=6to29", "adjustments.claims.1.seed_layers", "first-last of n_layers"),
    ("pathlength.claims.0.values=[0.6,0.2]", "pathlength.claims.0.values", "opposite signs"),
    ("qkv.claims.0.tolerance=-1", "qkv.claims.0.tolerance", "a number >= 0"),
    ("~qkv.claims.2.than", "qkv.claims.2.than", "a value (the key is required here)"),
    ("rotations.claims.0.support=0.4", "rotations.claims.0.support", "a number > 0.5"),
])
def test_a_bad_claim_is_one_line_naming_its_key(override, key, expected):
    with pytest.raises(ConfigError) as error:
        load_runs([*TINY, override], project_root=PROJECT_ROOT)
    message = str(error.value)
    assert message.startswith(f"config key '{key}'") and expected in message and "\n" not in message, message


def test_claims_on_an_experiment_without_measures_are_refused():
    with pytest.raises(ConfigError, match="config key 'anisotropy.claims': expected no claims"):
        load_runs([*TINY, "experiment_packages=[examples]", "experiments=[anisotropy]",
                   "+anisotropy.claims=[{id: a, seed: x, says: y, kind: near, series: [a], value: 0, tolerance: 1}]"],
                  project_root=PROJECT_ROOT)


def test_claims_are_their_own_stage_and_the_figures_hash_only_their_references():
    def hashes(*overrides):
        (run,) = load_runs([*TINY, *overrides], project_root=PROJECT_ROOT)
        return {name: stage.hash for name, stage in run.stages.items()}

    base = hashes()
    assert {name for name in base if name.endswith(".claims")} == {f"{e}.claims" for e in
                                                                   ("qkv", "adjustments", "pathlength", "rotations")}
    changed = lambda *o: {n for n, h in hashes(*o).items() if base.get(n) != h}  # noqa: E731
    # a threshold of a claim drawn on the figures: its claims stage and its figures
    assert changed("adjustments.claims.0.tolerance=0.1") == {"adjustments.claims", "adjustments.plot"}
    # a claim not drawn: its claims stage only; the analysis never reruns
    assert changed("adjustments.claims.3.tolerance=0.1") == {"adjustments.claims"}
    assert changed("qkv.claims=[]") == {"qkv.plot"}                 # no claims stage, no reference bands
    (run,) = load_runs([*TINY, "qkv.claims=[]"], project_root=PROJECT_ROOT)
    assert "qkv.claims" not in run.stages and "references" not in run.stages["qkv.plot"].config


def test_references_are_the_reported_ranges_of_claims_that_carry_a_label():
    refs = references(default_claims("adjustments"))
    assert {(r["claim"], r["low"], r["high"]) for r in refs} == {
        ("middle_near_zero", -0.05, 0.05), ("shoulder_first", 0.1, 0.2), ("shoulder_last", 0.1, 0.2)}
    assert all(r["label"] == "course, GPT-2 Large" for r in refs)
    flips = references(default_claims("pathlength"))
    assert [(r["series"], r["low"]) for r in flips[:2]] == [("pearson_attn_hs:all", 0.6),
                                                            ("pearson_attn_hs:without_first", -0.2)]


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_claims_stage_end_to_end_cached_reported_and_swept(tmp_path, built_models):
    overrides = [*TINY, "experiments=[adjustments]", "adjustments.claims.3.n_bootstrap=100", built_models]
    snakemake(tmp_path, overrides, "--cores", "2")
    (run,) = load_runs(overrides, project_root=PROJECT_ROOT)
    stage = run.stages["adjustments.claims"]
    folder = tmp_path / stage.output_dir
    assert sorted(p.name for p in folder.iterdir()) == ["claims.pdf", "claims.png", "claims.tsv", "config.yaml",
                                                         "summary.txt"]
    table = read_claims_table(folder / "claims.tsv")
    claims = run.config["adjustments"]["claims"]
    assert [r.claim for r in table] == [c["id"] for c in claims]
    # the near / within verdicts, recomputed from the metrics table by hand
    from laminae.store import read_tsv

    rows = [r for r in read_tsv(tmp_path / run.stages["adjustments.analysis"].output_dir / "adjustments.tsv")
            if r["metric"] == "cosine"]
    mean = np.array([float(r["value"]) for r in rows])
    sem = np.array([float(r["sem"]) for r in rows])
    low, high = mean - 1.959963984540054 * sem, mean + 1.959963984540054 * sem
    for c, result in zip(claims[:3], table[:3]):
        layers = [l for l in range(4) if c["depth"][0] - 1e-9 <= l / 3 <= c["depth"][1] + 1e-9]
        lo, hi = (c["value"] - c["tolerance"], c["value"] + c["tolerance"]) if c["kind"] == "near" else \
            (c["range"][0] - c["tolerance"], c["range"][1] + c["tolerance"])
        inside = all(low[l] >= lo and high[l] <= hi for l in layers)
        outside = any(high[l] < lo or low[l] > hi for l in layers)
        assert result.verdict == (HOLDS if inside else FAILS if outside else UNDECIDED), result
    log = (tmp_path / stage.dir / "claims.log").read_text()
    assert "claims: " in log and all(c["id"] in log for c in claims)
    assert (folder / "summary.txt").read_text().splitlines()[0] in log
    # cached; a claim's threshold reruns its claims and (drawn as a reference) the figures only
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n")) == {}
    assert scheduled_rules(snakemake(tmp_path, [*overrides, "adjustments.claims.0.tolerance=0.1"], "-n")) == {
        "adjustments_claims": 1, "adjustments_figures": 1, "all": 1}
    # the report shows the verdict table with its caption
    snakemake(tmp_path, overrides, "--report", str(tmp_path / "report.html"))
    report = (tmp_path / "report.html").read_text()
    assert "Claims of adjustments" in report and "middle_near_zero" in report
    # a sweep: two analyses, their claims, and the matrix of their verdicts
    sweep = ["adjustments.exclude_first_token=false,true"]
    snakemake(tmp_path, overrides, "--cores", "2", sweep=sweep)
    (matrix,) = (tmp_path / "results" / "sweeps").glob("claims-*")
    assert (matrix / "claims_matrix.png").stat().st_size > 0 and (matrix / "claims_matrix.pdf").is_file()
    rows = read_tsv(matrix / "claims_matrix.tsv")
    runs = load_runs(overrides, sweep, project_root=PROJECT_ROOT)
    assert [r["run"] for r in rows] == [run.label for run in runs]
    for row, swept in zip(rows, runs):
        own = read_claims_table(tmp_path / swept.stages["adjustments.claims"].output_dir / "claims.tsv")
        assert {f"adjustments:{r.claim}": r.verdict for r in own} == {k: v for k, v in row.items() if k != "run"}
    record = yaml.safe_load((matrix / "sweep.yaml").read_text())
    assert [run["label"] for run in record["runs"]] == [run.label for run in runs]
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n", sweep=sweep)) == {}


def test_figures_draw_the_reported_ranges_as_labelled_reference_bands():
    from laminae.experiments.adjustments.figures import plot_laminar
    from laminae.metrics.moments import LayerStats

    n = 6
    table = {"cosine": LayerStats(np.zeros(n), np.full(n, 0.1), np.full(n, 0.01), np.full(n, 300))}
    context = {"model": "m", "corpus": "c"}
    fig, ax = plot_laminar(table, context, "sem", references(default_claims("adjustments")))
    bands = [c for c in ax.collections if c.get_hatch()]
    extents = sorted((round(float(v[:, 0].min()), 2), round(float(v[:, 0].max()), 2), round(float(v[:, 1].min()), 3),
                      round(float(v[:, 1].max()), 3)) for v in (b.get_paths()[0].vertices for b in bands))
    # middle: layers 1-4 of 6 at [-0.05, 0.05]; shoulders: layer 0 and layer 5 at [0.1, 0.2]
    assert extents == [(-0.4, 0.4, 0.1, 0.2), (0.6, 4.4, -0.05, 0.05), (4.6, 5.4, 0.1, 0.2)]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "course, GPT-2 Large: reported (a reference, not this run)" in labels
    fig, ax = plot_laminar(table, context, "sem")
    assert not [c for c in ax.collections if c.get_hatch()]
    assert not any("reference" in text.get_text() for text in ax.get_legend().get_texts())
