"""laminae.metrics.cka against independent computations: the naive HSIC with explicit n x n
centred Gram matrices, closed forms (CKA(X, X) = 1, invariances), the debiased estimator's
formula written out (Song et al. 2012, Eq. as in Nguyen et al. 2021), the streaming accumulator
against the one-shot result, and torch_cka (PyPI `torch-cka`) as a second implementation."""

from __future__ import annotations

import numpy as np
import pytest

from laminae.metrics import cka
from laminae.metrics.resampling import bootstrap_counts, bootstrap_indices


def naive_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """tr(K H L H) / (n - 1)^2 with explicit n x n matrices."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(x @ x.T @ h @ y @ y.T @ h)) / (n - 1) ** 2


def naive_cka(x: np.ndarray, y: np.ndarray) -> float:
    return naive_hsic(x, y) / np.sqrt(naive_hsic(x, x) * naive_hsic(y, y))


def song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012)'s unbiased HSIC, the formula term by term with explicit loops-free sums."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
             - 2.0 / (n - 2) * (one @ kt @ lt @ one))
    return float(value / (n * (n - 3)))


def song_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return song_unbiased_hsic(k, l) / np.sqrt(song_unbiased_hsic(k, k) * song_unbiased_hsic(l, l))


def random_layers(rng, n_layers=4, n=40, width=12, shared=0.7):
    """Layers that share a random signal to different degrees (CKA between 0 and 1)."""
    base = rng.normal(size=(n, width))
    return np.stack([shared * base @ rng.normal(size=(width, width)) + rng.normal(size=(n, width)) * (1 + i)
                     for i in range(n_layers)]) + rng.normal(size=(1, 1, width)) * 5   # an offset to centre away


# ------------------------------------------------------------------------------ linear CKA
def test_linear_hsic_and_cka_equal_the_naive_gram_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 7)) + 3.0, rng.normal(size=(30, 11)) @ rng.normal(size=(11, 11))
    y[:, :7] += x
    assert cka.linear_hsic(x, y) == pytest.approx(naive_hsic(x, y), rel=1e-10)
    assert cka.linear_cka(x, y) == pytest.approx(naive_cka(x, y), rel=1e-10)
    assert 0.05 < cka.linear_cka(x, y) < 0.95


def test_linear_cka_matrix_equals_pairwise_naive_and_gram_form():
    rng = np.random.default_rng(1)
    xs, ys = random_layers(rng, 4, 25, 6), random_layers(rng, 3, 25, 9)
    expected = np.array([[naive_cka(x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(cka.linear_cka_matrix(xs, ys), expected, rtol=1e-10)
    np.testing.assert_allclose(cka.gram_cka_matrix(cka.gram(xs), cka.gram(ys)), expected, rtol=1e-10)
    within = np.array([[naive_cka(x, y) for y in xs] for x in xs])
    np.testing.assert_allclose(cka.linear_cka_matrix(xs), within, rtol=1e-10)


def test_closed_forms_identity_orthogonal_and_isotropic_scaling():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 8))
    y = x @ rng.normal(size=(8, 8)) + 0.5 * rng.normal(size=(50, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert cka.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    base = cka.linear_cka(x, y)
    assert cka.linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert cka.linear_cka(x, 3.7 * y + 2.0) == pytest.approx(base, rel=1e-10)
    # not invariant to an anisotropic scaling (CKA is not CCA): a change it must show
    assert abs(cka.linear_cka(x * np.array([10.0] + [1.0] * 7), y) - base) > 1e-3
    for estimator in cka.ESTIMATORS:
        g = cka.gram(np.stack([x, x @ q * 2.5]))
        np.testing.assert_allclose(cka.gram_cka_matrix(g, estimator=estimator), 1.0, atol=1e-10)


def test_cka_with_independent_random_rows_is_small():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5000, 10)), rng.normal(size=(5000, 10))
    # E[linear CKA] of independent data is about sqrt(p q) / n here: small with many rows
    assert cka.linear_cka(x, y) < 0.01
    xs, ys = rng.normal(size=(1, 60, 40)), rng.normal(size=(1, 60, 40))
    biased = cka.gram_cka_matrix(cka.gram(xs), cka.gram(ys), "linear")[0, 0]
    debiased = cka.gram_cka_matrix(cka.gram(xs), cka.gram(ys), "debiased")[0, 0]
    assert biased > 0.3                       # few rows, wide layers: the plain estimator is inflated
    assert abs(debiased) < 0.1                # the debiased one is near 0 (Nguyen et al. 2021, App.)


def test_constant_layer_gives_nan():
    x = np.ones((10, 3))
    assert np.isnan(cka.linear_cka(x, np.random.default_rng(0).normal(size=(10, 3))))


# ---------------------------------------------------------------------------- debiased CKA
def test_debiased_equals_the_formula_written_out():
    rng = np.random.default_rng(4)
    xs, ys = random_layers(rng, 3, 12, 5), random_layers(rng, 2, 12, 20)
    expected = np.array([[song_debiased_cka(x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(cka.gram_cka_matrix(cka.gram(xs), cka.gram(ys), "debiased"), expected, rtol=1e-9)
    # and U-centring's inner product is the unbiased HSIC itself, with its 1 / (n (n-3))
    k, l = cka.gram(xs[:1])[0], cka.gram(ys[:1])[0]
    n = k.shape[0]
    assert np.sum(cka.u_centre(k) * cka.u_centre(l)) / (n * (n - 3)) == pytest.approx(song_unbiased_hsic(k, l),
                                                                                       rel=1e-9)


def test_debiased_needs_four_rows():
    with pytest.raises(ValueError, match="at least 4"):
        cka.u_centre(np.eye(3))


# ------------------------------------------------------------------------ streaming form
@pytest.mark.parametrize("chunks", [[40], [7, 13, 1, 19], [1] * 40])
def test_streaming_within_equals_one_shot(chunks):
    rng = np.random.default_rng(5)
    xs = random_layers(rng, 5, sum(chunks), 6)
    acc = cka.CrossProducts(5, 6)
    start = 0
    for rows in chunks:
        acc.update(xs[:, start:start + rows].astype(np.float32 if len(chunks) == 40 else np.float64))
        start += rows
    expected = np.array([[naive_cka(x, y) for y in xs.astype(np.float32).astype(np.float64)] for x in xs]) \
        if chunks == [1] * 40 else np.array([[naive_cka(x, y) for y in xs] for x in xs])
    np.testing.assert_allclose(acc.cka(), expected, rtol=1e-6 if chunks == [1] * 40 else 1e-10)
    hsic = np.array([[naive_hsic(x, y) for y in xs] for x in xs])
    if chunks != [1] * 40:
        np.testing.assert_allclose(acc.hsic(), hsic, rtol=1e-10)


@pytest.mark.parametrize("chunks", [[50], [7, 13, 1, 29]])
def test_streamed_debiased_equals_the_formula_written_out(chunks):
    """The feature-space debiased CKA (never an n x n matrix) against Song et al.'s formula on
    the Gram matrices, under a large common offset (what the shift is for)."""
    rng = np.random.default_rng(8)
    xs = random_layers(rng, 4, sum(chunks), 7) + 40.0
    acc = cka.CrossProducts(4, 7, debiased=True)
    start = 0
    for rows in chunks:
        acc.update(xs[:, start:start + rows])
        start += rows
    expected = np.array([[song_debiased_cka(x, y) for y in xs] for x in xs])
    np.testing.assert_allclose(acc.debiased_cka(), expected, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="no row weights"):
        acc.update(xs[:, :3], weights=np.ones(3))


def test_within_run_on_many_rows_streams_every_row_and_resamples_a_subsample(tmp_path, experiment):
    """Above gram_rows (a corpus): the CKA values are every row's (the formulas written out),
    the p-values those of the naive shuffle loop on the rows drawn, as the table says."""
    from laminae.experiments.cka.analysis import read_table, subsample_stream
    from laminae.stages.analysis import run_analysis

    data = stimuli_data(seed=4, n_words=45)
    store = write_stimuli_store(tmp_path / "activations", data, [f"w{i}" for i in range(45)])
    settings = {**CKA_SETTINGS, "gram_rows": 16, "n_permutations": 30, "n_bootstrap": 20}
    config = {"cka": {**settings, "plot": {}}, "stage": "cka.analysis", "version": 1, "upstream": UPSTREAM}
    run_analysis(experiment, {"stage": "cka.analysis", "hash": "a1b2c3d4e5", "config": config}, store,
                 tmp_path / "metrics", chunk_rows=7)
    table = read_table(tmp_path / "metrics" / "cka_layers.tsv")
    x = data["resid_post"].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(table["cka"], [[song_debiased_cka(a, b) for b in x] for a in x], rtol=1e-7)
    np.testing.assert_allclose(table["cka_linear"], [[naive_cka(a, b) for b in x] for a in x], rtol=1e-7)
    assert np.all(table["n_rows"] == 45) and np.all(table["n_resampled"] == 16)
    kept = np.sort(np.random.default_rng(subsample_stream(3)).choice(45, 16, replace=False))
    sub = x[:, kept]
    _, perm_seq = np.random.SeedSequence(3).spawn(2)
    perms = np.random.default_rng(perm_seq).permuted(np.tile(np.arange(16), (30, 1)), axis=1)
    value = song_debiased_cka(sub[0], sub[2])
    null = np.array([song_debiased_cka(sub[0], sub[2][perm]) for perm in perms])
    assert table["p_value"][0, 2] == pytest.approx((1 + np.sum(null >= value * (1 - 1e-12))) / 31, rel=1e-12)


def test_streaming_between_and_merge_equal_one_shot():
    rng = np.random.default_rng(6)
    xs, ys = random_layers(rng, 3, 60, 5), random_layers(rng, 4, 60, 8)
    first, second = cka.CrossProducts(3, 5, 4, 8), cka.CrossProducts(3, 5, 4, 8)
    first.update(xs[:, :22], ys[:, :22])
    second.update(xs[:, 22:41], ys[:, 22:41])
    second.update(xs[:, 41:], ys[:, 41:])
    first.merge(second)
    expected = np.array([[naive_cka(x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(first.cka(), expected, rtol=1e-10)
    within_a, within_b = cka.CrossProducts(3, 5), cka.CrossProducts(3, 5)
    within_a.update(xs[:, :30])
    within_b.update(xs[:, 30:])
    within_a.merge(within_b)
    np.testing.assert_allclose(within_a.cka(), cka.linear_cka_matrix(xs), rtol=1e-10)
    with pytest.raises(ValueError, match="different shapes"):
        first.merge(within_a)
    assert cka.accumulator_bytes(3, 5, 4, 8) == 8 * (3 * 4 * 5 * 8 + 3 * 25 + 4 * 64 + 3 * 5 + 4 * 8)


def test_weighted_form_equals_the_data_with_rows_repeated():
    rng = np.random.default_rng(7)
    xs, ys = random_layers(rng, 2, 20, 4), random_layers(rng, 3, 20, 6)
    draws = bootstrap_indices(20, 3, rng)                          # (3, 20)
    weights = bootstrap_counts(draws, 20)
    got = cka.weighted_linear_cka_matrix(xs, ys, weights)
    for b, idx in enumerate(draws):
        expected = np.array([[naive_cka(x[idx], y[idx]) for y in ys] for x in xs])
        np.testing.assert_allclose(got[b], expected, rtol=1e-9)
    np.testing.assert_allclose(cka.weighted_linear_cka_matrix(xs, None, weights)[0],
                               cka.linear_cka_matrix(xs[:, draws[0]]), rtol=1e-9)


def test_block_row_counts_repeat_whole_windows():
    block_of_row = np.repeat(np.arange(4), 3)                     # 4 windows of 3 tokens
    draws = np.array([[0, 0, 3, 1], [2, 2, 2, 2]])
    counts = cka.block_row_counts(block_of_row, draws)
    np.testing.assert_array_equal(counts, [[2] * 3 + [1] * 3 + [0] * 3 + [1] * 3, [0] * 6 + [4] * 3 + [0] * 3])


# ------------------------------------------------------------------------- resampling
def test_bootstrap_replicates_equal_cka_of_the_drawn_rows():
    rng = np.random.default_rng(8)
    xs, ys = random_layers(rng, 3, 15, 4), random_layers(rng, 2, 15, 5)
    draws = bootstrap_indices(15, 4, rng)
    got = cka.bootstrap_cka(cka.gram(xs), cka.gram(ys), draws, "linear")
    for b, idx in enumerate(draws):
        np.testing.assert_allclose(got[b], np.array([[naive_cka(x[idx], y[idx]) for y in ys] for x in xs]),
                                   rtol=1e-9)


def test_debiased_bootstrap_uses_the_distinct_drawn_rows():
    rng = np.random.default_rng(9)
    xs = random_layers(rng, 2, 12, 4)
    idx = np.array([0, 0, 1, 2, 3, 4, 5, 5, 5, 6, 7, 8])
    got = cka.bootstrap_cka(cka.gram(xs), None, idx[None], "debiased")[0]
    distinct = np.arange(9)
    assert got[0, 1] == pytest.approx(song_debiased_cka(xs[0][distinct], xs[1][distinct]), rel=1e-9)
    assert got[0, 0] == pytest.approx(1.0)
    # invariant to a shift of the features, like the estimator itself
    shifted = cka.bootstrap_cka(cka.gram(xs + 50.0), None, idx[None], "debiased")[0]
    np.testing.assert_allclose(shifted, got, rtol=1e-6)
    assert np.isnan(cka.bootstrap_cka(cka.gram(xs), None, np.array([[0, 0, 1, 1, 2, 2]]), "debiased")).all()


@pytest.mark.parametrize("estimator", cka.ESTIMATORS)
def test_permutation_null_permutes_one_side(estimator):
    rng = np.random.default_rng(10)
    xs, ys = random_layers(rng, 2, 14, 4), random_layers(rng, 3, 14, 6)
    perms = np.stack([rng.permutation(14) for _ in range(3)])
    got = cka.permutation_cka(cka.gram(xs), cka.gram(ys), perms, estimator)
    for b, perm in enumerate(perms):
        if estimator == "linear":
            expected = np.array([[naive_cka(x, y[perm]) for y in ys] for x in xs])
        else:
            expected = np.array([[song_debiased_cka(x, y[perm]) for y in ys] for x in xs])
        np.testing.assert_allclose(got[b], expected, rtol=1e-9)


def test_best_match_and_relative_depth():
    matrix = np.array([[0.9, 0.2, 0.1], [0.3, 0.4, 0.8], [np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(cka.best_match(matrix), [0, 2, -1])
    np.testing.assert_allclose(cka.relative_depth([0, 2, 4], 5), [0.0, 0.5, 1.0])


# ------------------------------------------------------------- a second implementation
def test_against_torch_cka():
    """torch_cka (PyPI torch-cka 0.21, Subramanian; github.com/AntixK/PyTorch-Model-Compare) computes
    minibatch CKA from Nguyen et al.'s unbiased HSIC on each batch's Gram matrices. On one batch it
    is the debiased CKA; its `compare` runs two models over a DataLoader, hooked on their layers."""
    torch = pytest.importorskip("torch")
    torch_cka = pytest.importorskip("torch_cka")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Layers(nn.Module):
        """The given activations as the outputs of `n` identity layers, looked up by the input row."""

        def __init__(self, acts):
            super().__init__()
            self.acts = torch.as_tensor(acts, dtype=torch.float64)
            self.layers = nn.ModuleList(nn.Identity() for _ in range(len(acts)))

        def forward(self, index):
            for layer, act in zip(self.layers, self.acts):
                layer(act[index])
            return index

    rng = np.random.default_rng(11)
    xs, ys = random_layers(rng, 3, 32, 5), random_layers(rng, 2, 32, 7)
    loader = DataLoader(TensorDataset(torch.arange(32)), batch_size=32)
    model_a, model_b = Layers(xs), Layers(ys)
    names_a = [f"layers.{i}" for i in range(3)]
    names_b = [f"layers.{i}" for i in range(2)]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = torch_cka.CKA(model_a, model_b, "A", "B", names_a, names_b)
        other.hsic_matrix = None
        torch.set_default_dtype(torch.float64)
        try:
            other.compare(loader, loader)
        finally:
            torch.set_default_dtype(torch.float32)
    theirs = other.export()["CKA"].numpy()
    # torch_cka keeps the HSIC matrix in float32: agreement to float32 precision
    np.testing.assert_allclose(cka.gram_cka_matrix(cka.gram(xs), cka.gram(ys), "debiased"), theirs, rtol=2e-5,
                               atol=2e-6)


def test_streaming_keeps_precision_under_a_large_common_offset():
    """Residual streams carry huge constant dimensions: the accumulator shifts rows by the first
    chunk's mean, so X^T X - n m m^T does not cancel away the signal."""
    rng = np.random.default_rng(12)
    xs = random_layers(rng, 3, 200, 6) + 1e6 * np.array([1.0, 0, 0, 0, 0, 0])
    expected = np.array([[naive_cka(x - x.mean(0), y - y.mean(0)) for y in xs] for x in xs])
    acc, other = cka.CrossProducts(3, 6), cka.CrossProducts(3, 6)
    acc.update(xs[:, :50])
    other.update(xs[:, 50:] + 0.0)
    acc.merge(other)
    np.testing.assert_allclose(acc.cka(), expected, rtol=1e-8)


# ===================================================================== the `cka` experiment
UPSTREAM = "c0ffee0c0f"
CKA_SETTINGS = {"site": "resid_post", "estimator": "debiased", "n_bootstrap": 60, "n_permutations": 80,
                "confidence": 0.9, "seed": 3, "gram_rows": 2000}
SITES = ("resid_post", "resid_pre", "attn_out", "mlp_out", "q", "k", "v")


def stimuli_data(seed=0, n_layers=4, n_words=14, width=10, drift=1.0):
    """Layers that drift away from the first one (adjacent layers alike, far ones less)."""
    rng = np.random.default_rng(seed)
    layers = [rng.normal(size=(n_words, width))]
    for _ in range(n_layers - 1):
        layers.append(layers[-1] + drift * rng.normal(size=(n_words, width)))
    resid = np.stack(layers) + 3.0
    return {site: (resid if site == "resid_post" else rng.normal(size=resid.shape)) for site in SITES}


def write_stimuli_store(out, data, words):
    from laminae.store import ActivationWriter

    n_layers, n_rows = data["resid_post"].shape[:2]
    with ActivationWriter(out, n_layers, n_rows, {"stage_hash": UPSTREAM, "model_id": "test"},
                          config_text="stage: stimuli.extract\n") as writer:
        writer.write(0, {site: values.astype(np.float32) for site, values in data.items()})
        writer.set_rows([{"word": w, "category": "c"} for w in words], ["word", "category"])
    return out


@pytest.fixture(scope="module")
def experiment():
    from laminae.registry import discover

    return discover([])["cka"]


@pytest.fixture(scope="module")
def within(tmp_path_factory, experiment):
    from laminae.stages.analysis import run_analysis

    root = tmp_path_factory.mktemp("cka")
    data = stimuli_data()
    words = [f"w{i}" for i in range(data["resid_post"].shape[1])]
    store = write_stimuli_store(root / "activations", data, words)
    config = {"cka": {**CKA_SETTINGS, "plot": {}}, "stage": "cka.analysis", "version": 1, "upstream": UPSTREAM}
    run_analysis(experiment, {"stage": "cka.analysis", "hash": "a1b2c3d4e5", "config": config}, store,
                 root / "metrics")
    return root, data["resid_post"].astype(np.float32).astype(np.float64)


def test_within_run_table_matches_an_independent_computation(within):
    """Point values from the written-out formulas, p-values from the same shuffles counted in a
    loop, the interval of one pair from naive replicates, BH with scipy."""
    import scipy.stats

    from laminae.experiments.cka.analysis import read_table

    root, x = within
    table = read_table(root / "metrics" / "cka_layers.tsv")
    n_layers, n = x.shape[:2]
    debiased = np.array([[song_debiased_cka(a, b) for b in x] for a in x])
    np.testing.assert_allclose(table["cka"], debiased, rtol=1e-7)
    np.testing.assert_allclose(table["cka_linear"], [[naive_cka(a, b) for b in x] for a in x], rtol=1e-7)
    assert table["cka"][0, 1] > table["cka"][0, 3]          # the drift: far layers less alike
    boot_seq, perm_seq = np.random.SeedSequence(CKA_SETTINGS["seed"]).spawn(2)
    perms = np.random.default_rng(perm_seq).permuted(np.tile(np.arange(n), (CKA_SETTINGS["n_permutations"], 1)),
                                                    axis=1)
    p = np.full((n_layers, n_layers), np.nan)
    for a in range(n_layers):
        for b in range(n_layers):
            if a != b:
                null = np.array([song_debiased_cka(x[a], x[b][perm]) for perm in perms])
                p[a, b] = (1 + np.sum(null >= debiased[a, b] * (1 - 1e-12))) / (1 + len(perms))
    np.testing.assert_allclose(table["p_value"], p, rtol=1e-12)
    upper = np.triu_indices(n_layers, 1)
    np.testing.assert_allclose(table["q_value"][upper], scipy.stats.false_discovery_control(p[upper], method="bh"))
    draws = np.random.default_rng(boot_seq).integers(0, n, size=(CKA_SETTINGS["n_bootstrap"], n))
    replicates = [song_debiased_cka(x[0][np.unique(idx)], x[2][np.unique(idx)]) for idx in draws]
    assert table["ci_low"][0, 2] == pytest.approx(np.percentile(replicates, 5), rel=1e-7)
    assert table["ci_high"][0, 2] == pytest.approx(np.percentile(replicates, 95), rel=1e-7)


def test_within_run_measures_figure_and_compare(within, experiment):
    from laminae.experiment import CompareJob, MeasureJob
    from laminae.experiments.cka.analysis import read_table
    from laminae.stages.figures import run_figures

    root, x = within
    table = read_table(root / "metrics" / "cka_layers.tsv")
    measured = experiment.hook("measure")(MeasureJob(root / "metrics", CKA_SETTINGS))
    adjacent = measured["cka_adjacent"]
    np.testing.assert_allclose(adjacent.values[:-1], [table["cka"][i, i + 1] for i in range(3)])
    assert np.isnan(adjacent.values[-1]) and adjacent.has_interval
    np.testing.assert_allclose(measured["cka_to_last"].values, table["cka"][:, -1])
    context = {"model": "tiny", "random_weights": False, "template": "The {word}", "stimuli": "s",
               "analysis": CKA_SETTINGS}
    record = {"stage": "cka.plot", "hash": "0" * 10, "config": {"plot": {"dpi": 60}, "cka": {"plot": {}}}}
    written = run_figures(experiment, record, context, root / "metrics", root / "figures")
    assert (root / "figures" / "cka_layers.png").stat().st_size > 10_000 and written
    fig = experiment.hook("compare")(CompareJob([root / "metrics"] * 2, ["a=1", "a=2"], [CKA_SETTINGS] * 2, {}))
    assert len(fig.axes[0].lines) >= 2


def test_across_runs_matches_pairwise_naive_cka(tmp_path, experiment):
    """The across hook on two stores of different depth and width holding the same words in
    different orders: the job matches rows by word; every pair of layers checked naively."""
    from laminae.experiment import AcrossJob, FigureJob
    from laminae.experiments.cka.across import read_across
    from laminae.stages.across import match_rows
    from laminae.store import ActivationStore

    words = [f"w{i}" for i in range(12)]
    first = stimuli_data(1, n_layers=3, n_words=12, width=6)
    second = stimuli_data(2, n_layers=5, n_words=12, width=9)
    second["resid_post"][:, :, :6] += 2 * first["resid_post"][1]          # B shares A's layer 1
    order = np.random.default_rng(0).permutation(12)
    shuffled = {site: values[:, order] for site, values in second.items()}
    stores = [ActivationStore(write_stimuli_store(tmp_path / "a", first, words)),
              ActivationStore(write_stimuli_store(tmp_path / "b", shuffled, [words[i] for i in order]))]
    groups, items = match_rows(stores, "stimuli")
    settings = {**CKA_SETTINGS, "n_bootstrap": 30}
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    job = AcrossJob(settings=settings, labels=["model=a", "model=b"], stores=stores, groups=groups,
                    n_items=len(items), items=items, match_rule="stimuli: by word", out_dir=metrics, attrs={})
    experiment.across.hook("analyse", experiment.module)(job)
    runs, pairs = read_across(metrics)
    assert [r["match_rule"] for r in runs] == ["stimuli: by word"] * 2 and [r["n_layers"] for r in runs] == ["3", "5"]
    xa = first["resid_post"].astype(np.float32).astype(np.float64)
    xb = second["resid_post"].astype(np.float32).astype(np.float64)
    expected = np.array([[song_debiased_cka(a, b) for b in xb] for a in xa])
    np.testing.assert_allclose(pairs[(0, 1)]["cka"], expected, rtol=1e-7)
    assert np.all(pairs[(0, 1)]["ci_low"] <= pairs[(0, 1)]["cka"] + 1e-9)
    figures = tmp_path / "figures"
    figures.mkdir()
    context = {"labels": job.labels, "models": ["a", "b"], "match_rule": job.match_rule, "steps": None, "n_items": 12}
    experiment.across.hook("plot", experiment.module)(FigureJob(settings=settings, plot={}, dpi=60,
                                                                 metrics_dir=metrics, out_dir=figures, context=context))
    for name in ("cka_across", "cka_best_match", "cka_reference"):
        assert (figures / f"{name}.png").is_file() and (figures / f"{name}.pdf").is_file()


def test_reference_profile_over_checkpoints():
    """Same-layer CKA against the final checkpoint: the pair is read in either stored order."""
    from laminae.experiments.cka.across import reference_run, same_layer_profile, shown_pairs

    matrix = np.arange(9.0).reshape(3, 3) / 10
    pairs = {(0, 1): {"cka": matrix}}
    assert reference_run(2, [1000, 10]) == 0
    np.testing.assert_allclose(same_layer_profile(pairs, 1, 0, [3, 3]), np.diag(matrix.T))
    np.testing.assert_allclose(same_layer_profile(pairs, 0, 1, [3, 3]), np.diag(matrix))
    assert shown_pairs(5, 4) == [(0, 4), (1, 4), (2, 4), (3, 4)] and len(shown_pairs(4, 3)) == 6


def test_across_checkpoints_draws_the_reference_heatmap_on_steps(tmp_path, experiment):
    """Three 'checkpoints' of one architecture: the final step is the reference whatever the
    sweep's order; every across figure is written."""
    from laminae.experiment import AcrossJob, FigureJob
    from laminae.experiments.cka.across import read_across, same_layer_profile
    from laminae.stages.across import match_rows
    from laminae.store import ActivationStore

    words = [f"w{i}" for i in range(10)]
    final = stimuli_data(5, n_layers=4, n_words=10, width=6)
    runs = []
    for index, noise in enumerate((0.0, 3.0, 0.3)):              # final, early, middle
        data = {site: v + noise * np.random.default_rng(index).normal(size=v.shape) for site, v in final.items()}
        runs.append(ActivationStore(write_stimuli_store(tmp_path / f"s{index}", data, words)))
    groups, items = match_rows(runs, "stimuli")
    metrics, figures = tmp_path / "metrics", tmp_path / "figures"
    metrics.mkdir()
    figures.mkdir()
    labels = ["model.revision=step143000", "model.revision=step0", "model.revision=step1000"]
    settings = {**CKA_SETTINGS, "n_bootstrap": 10}
    experiment.across.hook("analyse", experiment.module)(AcrossJob(
        settings=settings, labels=labels, stores=runs, groups=groups, n_items=10, items=items, match_rule="by word",
        out_dir=metrics, attrs={}))
    _, pairs = read_across(metrics)
    early, middle = (same_layer_profile(pairs, run, 0, [4, 4, 4]) for run in (1, 2))
    assert np.all(middle > early)                                  # less noise: closer to the final checkpoint
    context = {"labels": labels, "steps": [143000, 0, 1000], "match_rule": "by word"}
    experiment.across.hook("plot", experiment.module)(FigureJob(settings=settings, plot={}, dpi=60,
                                                                 metrics_dir=metrics, out_dir=figures, context=context))
    assert {p.name for p in figures.iterdir()} == {f"{n}.{e}" for n in ("cka_across", "cka_best_match", "cka_reference")
                                                   for e in ("png", "pdf")}


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_sweep_end_to_end_on_tiny_models_within_and_across(tmp_path, built_models):
    """Snakemake on two tiny random models (a sweep over `model`): each run's layer x layer
    table equals the debiased CKA of its stored activations, the sweep draws the adjacent-layer
    overlay, and the across stage's A x B table equals the formula on the two stores' rows
    matched by word."""
    import yaml

    from workflow_helpers import snakemake

    from laminae.experiments.cka.across import read_across
    from laminae.experiments.cka.analysis import read_table
    from laminae.store import ActivationStore

    overrides = ["experiments=[cka]", "cka.n_bootstrap=40", "cka.n_permutations=40", "device=cpu", built_models]
    snakemake(tmp_path, overrides, "--cores", "2", sweep=["model=tiny-gpt2,tiny-llama"])
    sweeps = tmp_path / "results" / "sweeps"
    (compare,) = [f for f in sweeps.glob("cka-*") if "across" not in f.name]
    assert (compare / "compare_cka.png").stat().st_size > 0
    runs = yaml.safe_load((compare / "sweep.yaml").read_text())["runs"]
    acts = {}
    for run in runs:
        metrics = tmp_path / run["metrics"]
        store = ActivationStore(metrics.parents[2] / "activations")
        x = store.read("resid_post")
        acts[run["label"].split("=")[1]] = (list(store.column("word")), x)
        expected = np.array([[song_debiased_cka(a, b) for b in x] for a in x])
        np.testing.assert_allclose(read_table(metrics / "cka_layers.tsv")["cka"], expected, rtol=1e-6, atol=1e-9)
    (across,) = sweeps.glob("cka-across-*")
    runs_table, pairs = read_across(across / "metrics")
    assert [r["label"] for r in runs_table] == ["model=tiny-gpt2", "model=tiny-llama"]
    (words_a, xa), (words_b, xb) = acts["tiny-gpt2"], acts["tiny-llama"]
    order = [words_b.index(w) for w in words_a]
    expected = np.array([[song_debiased_cka(a, b[order]) for b in xb] for a in xa])
    np.testing.assert_allclose(pairs[(0, 1)]["cka"], expected, rtol=1e-6, atol=1e-9)
    for name in ("cka_across", "cka_best_match", "cka_reference"):
        assert (across / "figures" / f"{name}.png").stat().st_size > 0


def test_accumulator_refuses_mismatched_chunks():
    acc = cka.CrossProducts(2, 3, 2, 4)
    with pytest.raises(ValueError, match="group B too"):
        acc.update(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match=r"group B must be \(2, 5, 4\)"):
        acc.update(np.zeros((2, 5, 3)), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match=r"group A must be \(2, rows, 3\)"):
        cka.CrossProducts(2, 3).update(np.zeros((3, 5, 3)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        cka.CrossProducts(2, 3).cka()


@pytest.mark.parametrize("overrides, kind, sites", [
    (["experiments=[cka]", "cka.inputs=corpus", "cka.site=mlp_out"], "corpus", ["mlp_out"]),
    (["experiments=[cka]"], "stimuli", ["resid_post"]),
    (["experiments=[qkv,cka]", "cka.site=k"], "stimuli", ["q", "k", "v"]),
])
def test_only_the_site_named_is_stored(overrides, kind, sites):
    from pathlib import Path
    """`cka.site` (its site_key) decides what the extraction stores for it, on either inputs."""
    from laminae.config import load_runs

    (run,) = load_runs(["model=tiny-gpt2", *overrides], project_root=Path(__file__).resolve().parents[1])
    assert run.experiments["cka"].inputs == kind and run.experiments["cka"].sites == (sites[1] if len(sites) > 1
                                                                                     else sites[0],)
    assert run.stages[f"{kind}.extract"].config["sites"] == sites
    assert run.stages["cka.analysis"].dir.parent.parent.parent.name == kind


def test_a_site_not_declared_is_refused_in_one_line():
    from laminae.config import load_runs
    from laminae.errors import ConfigError

    with pytest.raises(ConfigError, match="cka.site"):
        load_runs(["model=tiny-gpt2", "experiments=[cka]", "cka.site=pattern"],
                  project_root=__import__("pathlib").Path(__file__).resolve().parents[1])
