"""The attention experiment (where each head looks): the statistics of
laminae.metrics.attention against naive loops and scipy, the streaming reducer against a
one-shot computation (uneven chunks, shards), the figures, the measures, and (slow) an end-to-end
run whose numbers are checked against a plain HF forward with `output_attentions=True`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from laminae.metrics.attention import (STATISTICS, block_bootstrap_means, block_sums, mass_after_query,
                                       pattern_statistics, query_blocks, ratio_of_sums)


def random_patterns(rng, rows, n_heads, n_keys, position, n_visible, *, causal, peaked=False):
    """Softmax over the visible keys of random logits: (rows, n_heads, n_keys), 0 elsewhere."""
    logits = rng.normal(scale=3.0 if peaked else 1.0, size=(rows, n_heads, n_keys))
    p = np.zeros_like(logits)
    for r in range(rows):
        visible = np.arange(position[r] + 1) if causal else np.arange(n_visible[r])
        e = np.exp(logits[r][:, visible] - logits[r][:, visible].max(axis=-1, keepdims=True))
        p[r][:, visible] = e / e.sum(axis=-1, keepdims=True)
    return p


def naive_statistics(p, position, n_visible, causal):
    rows, n_heads, n_keys = p.shape
    out = np.full((rows, n_heads, len(STATISTICS)), np.nan)
    for r in range(rows):
        for h in range(n_heads):
            probs = p[r, h]
            h_nats = -sum(float(x) * math.log(float(x)) for x in probs if x > 0)
            out[r, h, 0] = h_nats
            out[r, h, 1] = h_nats / math.log(n_visible[r]) if n_visible[r] >= 2 else np.nan
            out[r, h, 2] = probs[0]
            out[r, h, 3] = sum(probs[j] * ((position[r] - j) if causal else abs(position[r] - j)) for j in range(n_keys))
            out[r, h, 4] = 1 / n_visible[r]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_pattern_statistics_match_a_naive_loop(causal):
    rng = np.random.default_rng(0)
    lengths = [5, 3, 7]
    position = np.concatenate([np.arange(n) for n in lengths])
    n_visible = position + 1 if causal else np.concatenate([[n] * n for n in lengths])
    p = random_patterns(rng, position.size, 3, 7, position, n_visible, causal=causal, peaked=True)
    got = pattern_statistics(p.astype(np.float32), position, n_visible, causal=causal)
    want = naive_statistics(p.astype(np.float32).astype(np.float64), position, n_visible, causal)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    # float64 patterns sum to 1 to round-off, so scipy's entropy (which renormalises) agrees
    got64 = pattern_statistics(p, position, n_visible, causal=causal)
    np.testing.assert_allclose(got64[..., 0], scipy_entropy(p, axis=-1), rtol=1e-12, atol=1e-14)
    # bounds: normalised entropy in [0, 1], sink in [0, 1], distance in [0, max offset]
    finite = np.isfinite(got[..., 1])
    assert (got[..., 1][finite] >= -1e-7).all() and (got[..., 1][finite] <= 1 + 1e-6).all()


def test_pattern_statistics_extremes():
    """One-hot on the first key: entropy 0, sink 1, distance = position; uniform: ln n, 1, mean offset."""
    position = np.array([0, 3, 3])
    n_visible = position + 1
    p = np.zeros((3, 2, 4))
    p[:, 0, 0] = 1.0
    p[0, 1, 0] = 1.0
    p[1, 1, :4] = 0.25
    p[2, 1, 3] = 1.0                                            # looks at itself
    got = pattern_statistics(p, position, n_visible, causal=True)
    np.testing.assert_allclose(got[:, 0, 0], 0.0)
    np.testing.assert_allclose(got[:, 0, 2], 1.0)
    np.testing.assert_allclose(got[:, 0, 3], position)
    np.testing.assert_allclose(got[1, 1, :4], [math.log(4), 1.0, 0.25, 1.5])
    np.testing.assert_allclose(got[2, 1, [0, 2, 3]], [0.0, 0.0, 0.0])
    assert np.isnan(got[0, :, 1]).all()                          # one visible key: normalised entropy undefined
    bad = p.copy()
    bad[1, 0, 2] = np.nan
    assert np.isnan(pattern_statistics(bad, position, n_visible, causal=True)[1, 0]).all()


def test_mass_after_query():
    p = np.zeros((2, 1, 3))
    p[0, 0] = [0.5, 0.3, 0.2]
    p[1, 0] = [0.1, 0.1, 0.8]
    np.testing.assert_allclose(mass_after_query(p, np.array([0, 1]))[:, 0], [0.5, 0.8])


def test_query_blocks_number_blocks_in_row_order():
    window = np.array([3, 3, 3, 3, 3, 1, 1, 1])
    position = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    block, n = query_blocks(window, position, 2, include=position > 0)
    # window 3: {1} (pos 0 excluded), {2,3}, {4}; window 1: {1}, {2}
    assert n == 5
    np.testing.assert_array_equal(block, [-1, 0, 1, 1, 2, -1, 3, 4])
    with pytest.raises(ValueError, match="block_tokens"):
        query_blocks(window, position, 0)


def test_block_sums_and_ratio():
    values = np.array([[1.0, np.nan], [2.0, 4.0], [3.0, 5.0], [9.0, 9.0]])
    block = np.array([0, 0, 1, -1])
    sums, counts = block_sums(values, block, 2)
    np.testing.assert_allclose(sums, [[3.0, 4.0], [3.0, 5.0]])
    np.testing.assert_allclose(counts, [[2, 1], [1, 1]])
    np.testing.assert_allclose(ratio_of_sums(sums, counts), [2.0, 4.5])


def test_block_bootstrap_matches_a_naive_resampling():
    """Replicate b: the blocks drawn by default_rng(seed).integers(0, n_blocks, (B, n_blocks)),
    the mean over all their values (each drawn block's values counted as often as it is drawn)."""
    rng = np.random.default_rng(1)
    n_blocks, per_block = 6, 4
    values = rng.normal(size=(n_blocks * per_block, 2))
    values[3, 1] = np.nan
    block = np.repeat(np.arange(n_blocks), per_block)
    sums, counts = block_sums(values, block, n_blocks)
    got = block_bootstrap_means(sums, counts, n_bootstrap=50, seed=7, batch=16)
    draws = np.random.default_rng(7).integers(0, n_blocks, size=(50, n_blocks))
    for b in range(50):
        pooled = np.concatenate([values[block == k] for k in draws[b]])
        np.testing.assert_allclose(got[b], np.nanmean(pooled, axis=0), rtol=1e-12)
    assert block_bootstrap_means(sums, counts, n_bootstrap=0, seed=0).shape == (0, 2)


# ------------------------------------------------------------------------------ the reducer
from laminae.errors import ConfigError  # noqa: E402
from laminae.experiment import FigureJob, MeasureJob, ReducerJob  # noqa: E402
from laminae.store import RowTable, read_tsv  # noqa: E402

SETTINGS = {"exclude_first_token": True, "causal": "auto", "block_tokens": 2, "n_bootstrap": 40, "confidence": 0.9,
            "seed": 3}


def synthetic_corpus(rng, lengths=(5, 7, 4), n_layers=3, n_heads=2, d_model=6, causal=True):
    """rows, pattern (n_layers, rows, n_heads * n_keys), resid_post (n_layers, rows, d_model)."""
    n_keys = max(lengths)
    window = np.concatenate([[w] * n for w, n in enumerate(lengths)])
    position = np.concatenate([np.arange(n) for n in lengths])
    n_visible = position + 1 if causal else np.concatenate([[n] * n for n in lengths])
    pattern = np.stack([random_patterns(rng, position.size, n_heads, n_keys, position, n_visible, causal=causal,
                                        peaked=layer > 0).reshape(position.size, -1) for layer in range(n_layers)])
    resid = rng.normal(size=(n_layers, position.size, d_model))
    resid[:, position == 0] *= 20.0                                       # an outlier first token
    rows = RowTable([{"window": int(w), "position": int(p), "token_id": 100 + i}
                     for i, (w, p) in enumerate(zip(window, position))])
    return rows, pattern.astype(np.float32), resid, n_visible


def reducer_job(rows, pattern, resid, out_dir, settings=SETTINGS, family="llama", n_heads=2):
    return ReducerJob(settings=settings, rows=rows, n_layers=pattern.shape[0],
                      widths={"pattern": pattern.shape[2], "resid_post": resid.shape[2]},
                      model_attrs={"n_heads": n_heads, "family": family}, out_dir=out_dir,
                      attrs={"laminae_version": "test"})


def run_reducer(job, pattern, resid, sizes):
    from laminae.experiments.attention.analysis import AttentionReducer

    reducer = AttentionReducer(job)
    start = 0
    for size in sizes:
        stop = min(start + size, pattern.shape[1])
        reducer.update(start, {"pattern": pattern[:, start:stop], "resid_post": resid[:, start:stop]})
        start = stop
    assert start == pattern.shape[1]
    return reducer


def naive_tables(pattern, resid, rows, n_visible, n_heads, causal, settings):
    """Per (layer, head, statistic) means over included queries, the mean/median over heads, the
    block bootstrap by a loop over resampled blocks, and the norm ratio, all by loops."""
    position = rows.integers("position")
    window = rows.integers("window")
    n_layers, n_rows, width = pattern.shape
    n_keys = width // n_heads
    include = position > 0 if settings["exclude_first_token"] else np.ones(n_rows, bool)
    stats = np.stack([naive_statistics(pattern[layer].reshape(n_rows, n_heads, n_keys).astype(np.float64), position,
                                       n_visible, causal) for layer in range(n_layers)])   # (L, rows, H, S)
    head_means = np.nanmean(stats[:, include], axis=1)                                  # (L, H, S)
    # blocks: (window, position // block_tokens) in order of first appearance among included rows
    keys = []
    for w, p, keep in zip(window, position, include):
        if keep and (w, p // settings["block_tokens"]) not in keys:
            keys.append((w, p // settings["block_tokens"]))
    members = [np.flatnonzero(include & (window == w) & (position // settings["block_tokens"] == b)) for w, b in keys]
    draws = np.random.default_rng(settings["seed"]).integers(0, len(keys), size=(settings["n_bootstrap"], len(keys)))
    boot = np.stack([np.nanmean(stats[:, np.concatenate([members[k] for k in draw])], axis=1) for draw in draws])
    tail = 50 * (1 - settings["confidence"])
    first = position == 0
    norms = np.linalg.norm(resid, axis=-1)
    ratio = norms[:, first] / np.median(norms[:, ~first], axis=1)[:, None]
    return {"head_means": head_means, "boot": boot, "tail": tail, "ratio": ratio}


def table_value(rows, **where):
    hits = [row for row in rows if all(str(row[k]) == str(v) for k, v in where.items())]
    assert len(hits) == 1, where
    return hits[0]


@pytest.mark.parametrize("causal", [True, False])
def test_reducer_matches_naive_loops(tmp_path, causal, monkeypatch):
    from laminae.experiments.attention import analysis
    from laminae.experiments.attention.analysis import read_blocks

    rng = np.random.default_rng(11)
    rows, pattern, resid, n_visible = synthetic_corpus(rng, causal=causal, n_heads=3)   # 3: median != mean
    monkeypatch.setattr(analysis, "SLICE_ELEMENTS", 2 * 3 * 7)      # chunks cut into slices of 2 rows
    job = reducer_job(rows, pattern, resid, tmp_path, family="llama" if causal else "bert", n_heads=3)
    run_reducer(job, pattern, resid, sizes=[3, 1, 6, 4, 100]).finish()
    want = naive_tables(pattern, resid, rows, n_visible, 3, causal, SETTINGS)
    heads = read_tsv(tmp_path / "attention_heads.tsv")
    layers = read_tsv(tmp_path / "attention.tsv")
    tail = want["tail"]
    for s, metric in enumerate(STATISTICS):
        for layer in range(3):
            for head in range(3):
                row = table_value(heads, layer=layer, head=head, metric=metric)
                np.testing.assert_allclose(float(row["value"]), want["head_means"][layer, head, s], rtol=1e-9)
                low, high = np.percentile(want["boot"][:, layer, head, s], [tail, 100 - tail])
                np.testing.assert_allclose([float(row["ci_low"]), float(row["ci_high"])], [low, high], rtol=1e-9)
            values = want["head_means"][layer, :, s]
            for summary, reduce in (("mean", np.mean), ("median", np.median)):
                row = table_value(layers, layer=layer, metric=metric, summary=summary)
                np.testing.assert_allclose(float(row["value"]), reduce(values), rtol=1e-9)
                replicates = reduce(want["boot"][:, layer, :, s], axis=1)
                np.testing.assert_allclose([float(row["low"]), float(row["high"])],
                                           np.percentile(replicates, [tail, 100 - tail]), rtol=1e-9)
            for summary, value in (("min", values.min()), ("max", values.max()),
                                   ("q25", np.quantile(values, 0.25)), ("q75", np.quantile(values, 0.75))):
                np.testing.assert_allclose(float(table_value(layers, layer=layer, metric=metric,
                                                             summary=summary)["value"]), value, rtol=1e-9)
    for layer in range(3):
        row = table_value(layers, layer=layer, metric="first_token_norm_ratio", summary="median")
        np.testing.assert_allclose([float(row["value"]), float(row["low"]), float(row["high"])],
                                   [np.median(want["ratio"][layer]), want["ratio"][layer].min(),
                                    want["ratio"][layer].max()], rtol=1e-9)
        assert int(row["n"]) == 3
    arrays, attrs = read_blocks(tmp_path / "attention_blocks.h5")
    assert bool(attrs["causal"]) is causal and attrs["laminae_version"] == "test"
    np.testing.assert_allclose(arrays["resid_norm"], np.linalg.norm(resid, axis=-1), rtol=1e-12)


def test_first_token_included_when_asked(tmp_path):
    rng = np.random.default_rng(2)
    rows, pattern, resid, n_visible = synthetic_corpus(rng)
    settings = {**SETTINGS, "exclude_first_token": False, "n_bootstrap": 0}
    run_reducer(reducer_job(rows, pattern, resid, tmp_path, settings), pattern, resid, [7, 9]).finish()
    want = naive_tables(pattern, resid, rows, n_visible, 2, True, {**settings, "n_bootstrap": 1})
    heads = read_tsv(tmp_path / "attention_heads.tsv")
    row = table_value(heads, layer=1, head=0, metric="sink")
    np.testing.assert_allclose(float(row["value"]), want["head_means"][1, 0, 2], rtol=1e-9)
    assert int(row["n"]) == 16 and row["ci_low"] == ""                 # every query; no bootstrap: no CI
    assert int(table_value(heads, layer=1, head=0, metric="entropy_normalised")["n"]) == 13   # n = 1: undefined


def test_sharded_run_equals_unsharded(tmp_path):
    """Two shards (windows 0 and 1-2) reduced apart, partial(), absorbed: the same tables."""
    rng = np.random.default_rng(5)
    rows, pattern, resid, _ = synthetic_corpus(rng)
    whole = tmp_path / "whole"
    whole.mkdir()
    run_reducer(reducer_job(rows, pattern, resid, whole), pattern, resid, [4, 12]).finish()
    records = list(rows)
    cut = 5
    parts = []
    for index, (begin, end) in enumerate(((0, cut), (cut, len(records)))):
        folder = tmp_path / f"shard{index}"
        folder.mkdir()
        shard_rows = RowTable(records[begin:end])
        run_reducer(reducer_job(shard_rows, pattern[:, begin:end], resid[:, begin:end], folder),
                    pattern[:, begin:end], resid[:, begin:end], [3, 3, 3, 3]).partial()
        parts.append((begin, folder))
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    from laminae.experiments.attention.analysis import AttentionReducer

    reducer = AttentionReducer(reducer_job(rows, pattern, resid, gathered))
    for begin, folder in parts:
        reducer.absorb(begin, folder)
    reducer.finish()
    for name in ("attention.tsv", "attention_heads.tsv"):
        a, b = read_tsv(whole / name), read_tsv(gathered / name)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for key in x:
                if x[key] and key not in ("interval", "metric", "summary"):
                    np.testing.assert_allclose(float(x[key]), float(y[key]), rtol=1e-12, err_msg=f"{name} {key}")
                else:
                    assert x[key] == y[key]


def test_bidirectional_patterns_refused_as_causal(tmp_path):
    rng = np.random.default_rng(3)
    rows, pattern, resid, _ = synthetic_corpus(rng, causal=False)
    reducer = run_reducer(reducer_job(rows, pattern, resid, tmp_path, family="llama"), pattern, resid, [16])
    with pytest.raises(RuntimeError, match="attention.causal=false"):
        reducer.finish()


@pytest.mark.parametrize("key, value", [("n_bootstrap", -1), ("block_tokens", 0), ("confidence", 1.0),
                                        ("causal", "yes"), ("seed", 1.5), ("exclude_first_token", 1)])
def test_bad_settings_name_the_key(tmp_path, key, value):
    from laminae.experiments.attention.analysis import check_settings

    with pytest.raises(ConfigError, match=f"attention.{key}"):
        check_settings({**SETTINGS, key: value})


def test_figures_and_measures(tmp_path):
    from laminae.experiments.attention.figures import plot
    from laminae.experiments.attention.measures import measure

    rng = np.random.default_rng(8)
    rows, pattern, resid, _ = synthetic_corpus(rng, lengths=(9, 12, 6, 12), n_layers=5, n_heads=3)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    run_reducer(reducer_job(rows, pattern, resid, metrics, n_heads=3), pattern, resid, [10, 30]).finish()
    out = tmp_path / "figures"
    out.mkdir()
    plot(FigureJob(settings=SETTINGS, plot={"sort_heads": True}, dpi=60, metrics_dir=metrics, out_dir=out,
                   context={"model": "synthetic", "corpus": "synthetic", "random_weights": True}))
    for name in ("attention_laminar", "attention_heads", "attention_sink_norm"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").is_file()
    measurements = measure(MeasureJob(metrics_dir=metrics, settings=SETTINGS))
    table = read_tsv(metrics / "attention.tsv")
    sink = measurements["sink"]
    assert sink.n_layers == 5 and sink.has_interval
    np.testing.assert_allclose(sink.values, [float(table_value(table, layer=layer, metric="sink", summary="mean")["value"])
                                             for layer in range(5)])
    assert measurements["first_token_norm_ratio"].interval == "range over windows"
    assert (measurements["first_token_norm_ratio"].values > 5).all()          # the planted outlier (x20)
    from laminae.experiments.attention import MEASURES
    from laminae.experiments.attention import STATISTICS as DECLARED

    assert set(measurements) == {m.name for m in MEASURES} and DECLARED == STATISTICS


def test_compare_overlays_runs(tmp_path):
    from laminae.experiment import CompareJob
    from laminae.experiments.attention.compare import compare

    folders = []
    for index, n_layers in enumerate((3, 5)):
        rng = np.random.default_rng(index)
        rows, pattern, resid, _ = synthetic_corpus(rng, n_layers=n_layers)
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        run_reducer(reducer_job(rows, pattern, resid, folder), pattern, resid, [16]).finish()
        folders.append(folder)
    fig = compare(CompareJob(metrics_dirs=folders, labels=["a", "b"], settings=[SETTINGS, SETTINGS], plot={}))
    axes = fig.axes
    assert len(axes) == 3 and len(axes[1].lines) == 2
    np.testing.assert_allclose(axes[1].lines[1].get_xdata(), np.arange(5) / 4)     # relative depth


# ------------------------------------------------------------------------ end to end, tiny model
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
# 4 windows of 100, 100, 100 and 46 tokens; batches of 2 windows: the second batch is padded
SMALL = ["model=tiny-gpt2", "experiments=[attention]", "corpus.window_tokens=100", "batch_size=2", "device=cpu",
         "attention.n_bootstrap=50", "attention.block_tokens=8"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def attention_pipeline(out, models_dir, *overrides, kind="corpus"):
    """Extraction then analysis, as the Snakefile runs them; returns (run, activations, metrics)."""
    from laminae.config import load_runs
    from laminae.registry import discover
    from laminae.stages.analysis import run_analysis
    from laminae.stages.extract import extract

    (run,) = load_runs([*SMALL, f"models_dir={models_dir}", *overrides], project_root=ROOT)
    activations, metrics = out / "activations", out / "metrics"

    def record(stage):
        return {"stage": stage.name, "hash": stage.hash, "config": stage.config}

    extract(record(run.stages[f"{kind}.extract"]), run.runtime, activations, ROOT, discover())
    run_analysis(discover()["attention"], record(run.stages["attention.analysis"]), activations, metrics, run.runtime)
    return run, activations, metrics


def hf_reference(model_folder, rows, n_heads):
    """Per window, a plain HF forward (eager attention, output_attentions=True) of the window's
    tokens alone; the statistics of every query by the naive loop. Returns (stats (n_layers,
    rows, n_heads, n_stats), resid_post norms (n_layers, rows) from hidden_states)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_folder, attn_implementation="eager", dtype=torch.float32).eval()
    window, position, token = rows.integers("window"), rows.integers("position"), rows.integers("token_id")
    stats, norms = [], []
    for w in np.unique(window):
        index = np.flatnonzero(window == w)
        ids = torch.tensor(token[index][np.argsort(position[index])])[None]
        with torch.no_grad():
            out = model(ids, output_attentions=True, output_hidden_states=True)
        n = ids.shape[1]
        pos = np.arange(n)
        stats.append(np.stack([naive_statistics(a[0].permute(1, 0, 2).double().numpy(), pos, pos + 1, True)
                               for a in out.attentions]))                        # (n_layers, n, n_heads, S)
        norms.append(np.stack([h[0].double().norm(dim=-1).numpy() for h in out.hidden_states[1:]]))
    return np.concatenate(stats, axis=1), np.concatenate(norms, axis=1)


@pytest.mark.slow
def test_end_to_end_matches_a_plain_hf_forward(tmp_path, models_dir):
    """The pattern site through the extraction (stored, and reduced during extraction) against
    output_attentions=True of the same tiny GPT-2, statistics by the naive loop."""
    from laminae.store import RowTable

    run, stored, two_stage = attention_pipeline(tmp_path / "two", models_dir, "attention.during_extraction=false")
    _, inline, during = attention_pipeline(tmp_path / "during", models_dir, "attention.during_extraction=true")
    assert not list(inline.glob("layer_*.h5"))                                  # no patterns on disk
    for name in ("attention.tsv", "attention_heads.tsv"):
        a, b = read_tsv(two_stage / name), read_tsv(during / name)
        assert [r["metric"] for r in a] == [r["metric"] for r in b]
        for x, y in zip(a, b):
            for key in ("value", "low", "high", "ci_low", "ci_high"):
                if x.get(key):
                    np.testing.assert_allclose(float(y[key]), float(x[key]), rtol=1e-6, atol=1e-9)

    rows = RowTable.from_tsv(stored / "rows.tsv")
    folder = next(p for p in models_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())
    stats, norms = hf_reference(folder, rows, 4)
    include = rows.integers("position") > 0
    want = np.nanmean(stats[:, include], axis=1)                                  # (n_layers, n_heads, S)
    heads = read_tsv(two_stage / "attention_heads.tsv")
    for s, metric in enumerate(STATISTICS):
        got = np.array([[float(table_value(heads, layer=layer, head=head, metric=metric)["value"])
                         for head in range(4)] for layer in range(4)])
        np.testing.assert_allclose(got, want[..., s], rtol=2e-5, atol=1e-6, err_msg=metric)
    layers = read_tsv(two_stage / "attention.tsv")
    first = rows.integers("position") == 0
    for layer in range(3):                       # GPT-2's last hidden state has ln_f applied: not resid_post
        ratio = norms[layer, first] / np.median(norms[layer, ~first])
        row = table_value(layers, layer=layer, metric="first_token_norm_ratio", summary="median")
        np.testing.assert_allclose(float(row["value"]), np.median(ratio), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("position", ["target_last", "last"])
def test_on_stimuli_matches_a_plain_hf_forward(tmp_path, models_dir, position):
    """attention.inputs=stimuli: one query per word (the kept token's pattern), each prompt
    forwarded alone with output_attentions=True, statistics by the naive loop; the per-head
    means over words and the words' count agree."""
    import torch
    from transformers import AutoModel

    from laminae.store import RowTable

    run, stored, metrics = attention_pipeline(tmp_path, models_dir, "attention.inputs=stimuli",
                                              "attention.during_extraction=false", f"extract.position={position}",
                                              kind="stimuli")
    assert run.experiments["attention"].inputs == "stimuli" and "corpus.extract" not in run.stages
    rows = RowTable.from_tsv(stored / "rows.tsv")
    folder = next(p for p in models_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())
    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    stats = []
    for prompt, kept in zip(rows.column("prompt"), rows.integers("position")):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            attentions = model(ids, output_attentions=True).attentions
        query = np.array([kept])
        stats.append(np.stack([naive_statistics(a[0, :, kept][None].double().numpy(), query, query + 1, True)[0]
                               for a in attentions]))                           # (n_layers, n_heads, S)
    stats = np.stack(stats, axis=1)                                             # (n_layers, words, n_heads, S)
    include = rows.integers("position") > 0
    assert include.sum() >= 10
    want = np.nanmean(stats[:, include], axis=1)
    heads = read_tsv(metrics / "attention_heads.tsv")
    for s, metric in enumerate(STATISTICS):
        got = np.array([[float(table_value(heads, layer=layer, head=head, metric=metric)["value"])
                         for head in range(4)] for layer in range(4)])
        np.testing.assert_allclose(got, want[..., s], rtol=2e-5, atol=1e-6, err_msg=metric)
        assert {int(table_value(heads, layer=0, head=h, metric=metric)["n"]) for h in range(4)} == {int(include.sum())}
    from laminae.experiments.attention.analysis import read_blocks
    from laminae.experiments.attention.figures import category_profiles

    blocks, _ = read_blocks(metrics / "attention_blocks.h5")
    categories = np.array(rows.column("category"))
    sink = STATISTICS.index("sink")
    for category, (mean, sem) in category_profiles(blocks, sink).items():
        words = stats[..., sink][:, include & (categories == category)].mean(axis=2)   # (n_layers, words)
        np.testing.assert_allclose(mean, words.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(sem, words.std(axis=1, ddof=1) / np.sqrt(words.shape[1]), rtol=1e-5)


@pytest.mark.slow
def test_a_sweep_over_inputs_has_a_rule_per_kind(tmp_path):
    """`attention.inputs=corpus,stimuli`: two extractions, and the stimuli analysis under its own
    rules (`attention_analysis_stimuli`, ...) beside the corpus's."""
    from workflow_helpers import scheduled_rules, snakemake

    jobs = scheduled_rules(snakemake(tmp_path, ["model=tiny-gpt2", "experiments=[attention]"], "-n",
                                     sweep=["attention.inputs=corpus,stimuli"]))
    for rule in ("attention_analysis", "attention_figures", "attention_analysis_stimuli", "attention_figures_stimuli"):
        assert jobs.get(rule) == 1, jobs
    assert jobs["extract"] == 2, jobs


def test_stimuli_refuse_averaged_positions():
    from laminae.config import load_runs
    from laminae.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'extract\.position': expected target_last or last while attention"):
        load_runs(["model=tiny-gpt2", "experiments=[attention]", "attention.inputs=stimuli",
                   "extract.position=target_mean"], project_root=ROOT)
    with pytest.raises(ConfigError, match=r"attention\.inputs"):
        load_runs(["model=tiny-gpt2", "experiments=[attention]", "attention.inputs=images"], project_root=ROOT)


# ------------------------------------------------------------------------------ claims, captions
def write_sink_table(folder, sink, uniform, half_width=0.02):
    from laminae.experiments.attention.table import TABLE_COLUMNS, TABLE_FILENAME
    from laminae.store import write_tsv

    rows = [{"layer": layer, "metric": metric, "summary": "mean", "value": value, "low": value - half_width,
             "high": value + half_width, "interval": "95% block bootstrap CI", "n": 100}
            for metric, values in (("sink", sink), ("sink_uniform", uniform)) for layer, value in enumerate(values)]
    write_tsv(folder / TABLE_FILENAME, rows, TABLE_COLUMNS)


@pytest.mark.parametrize("dip, verdict", [(None, "holds"), (0.0, "fails"), (0.05, "undecided")])
def test_sink_claim_verdicts(tmp_path, dip, verdict):
    """Xiao et al.'s sink: above the uniform baseline at every layer past a tenth of the depth
    (layers 1-9 of 10 here); layer 0 is outside the band, so its value never matters."""
    import yaml

    from laminae.claims import evaluate_claims
    from laminae.registry import discover
    from laminae.stages.claims import measurements_of

    sink = np.full(10, 0.5)
    sink[0] = 0.0
    if dip is not None:
        sink[6] = dip                                    # 0: below the baseline; 0.05: intervals overlap it
    write_sink_table(tmp_path, sink, np.full(10, 0.04))
    claims = yaml.safe_load((ROOT / "conf" / "attention" / "default.yaml").read_text())["claims"]
    results = evaluate_claims(claims, measurements_of(discover()["attention"], tmp_path, SETTINGS))
    assert {r.claim: r.verdict for r in results} == {"sink_beyond_bottom_layers": verdict}


def test_captions_render_to_valid_restructuredtext():
    """Every caption through Jinja (as Snakemake's report does) and docutils, errors fatal."""
    from types import SimpleNamespace

    import docutils.core
    import docutils.utils
    import jinja2

    from laminae.registry import discover

    EXPERIMENT = discover()["attention"]
    inputs = ({"corpus": "nietzsche"}, {"stimuli": "experiment1", "template": "The next word is {word}",
                                        "position": "target_last"})
    for sort_heads, described in zip((False, True), inputs):
        context = {"model": "tiny-test", **described, "random_weights": sort_heads, "analysis": SETTINGS}
        stage = {"config": {"attention": {"plot": {"sort_heads": sort_heads}},
                            "runs": [{"label": "model=a", "analysis": "0123456789"}]}}
        snakemake = SimpleNamespace(params=SimpleNamespace(context=context, stage=stage),
                                    wildcards=SimpleNamespace(label="nietzsche"))
        for caption in [f.caption for f in EXPERIMENT.figures] + [EXPERIMENT.compare_caption]:
            text = jinja2.Template(EXPERIMENT.path(caption).read_text()).render(snakemake=snakemake)
            assert "tiny-test" in text or caption.endswith("compare.rst")
            assert caption.endswith("compare.rst") or next(iter(described.values())) in text
            docutils.core.publish_doctree(text, settings_overrides={
                "halt_level": docutils.utils.Reporter.WARNING_LEVEL, "report_level": 5})


@pytest.mark.slow
def test_sharded_extraction_equals_unsharded(tmp_path, models_dir):
    """attention.during_extraction with corpus.shards=3 (11 windows of <= 32 tokens, batches of
    2): each shard's partial() absorbed by the gather gives the unsharded run's tables."""
    from laminae.config import load_runs
    from laminae.registry import discover
    from laminae.shards import Shard, shard_name
    from laminae.stages.extract import extract
    from laminae.stages.gather import gather

    base = [*SMALL, "corpus.window_tokens=32", f"models_dir={models_dir}", "attention.during_extraction=true"]

    def record(stage):
        return {"stage": stage.name, "hash": stage.hash, "config": stage.config}

    (run,) = load_runs(base, project_root=ROOT)
    stage = record(run.stages["corpus.extract"])
    extract(stage, run.runtime, tmp_path / "full", ROOT, discover())
    (sharded,) = load_runs([*base, "corpus.shards=3"], project_root=ROOT)
    folders = []
    for index in range(3):
        shard = Shard(index, 3, run.runtime["batch_size"])
        folders.append(tmp_path / "shards" / shard_name(shard))
        extract(stage, sharded.runtime, folders[-1], ROOT, discover(), shard=shard)
    gather(stage, sharded.runtime, folders, tmp_path / "joined", discover())
    full, joined = tmp_path / "full" / "reductions" / "attention", tmp_path / "joined" / "reductions" / "attention"
    assert int(read_tsv(folders[1] / "rows.tsv")[0]["window"]) > 0
    for name in ("attention.tsv", "attention_heads.tsv"):
        a, b = read_tsv(full / name), read_tsv(joined / name)
        assert len(a) == len(b) >= 80
        for x, y in zip(a, b):
            for key in x:
                if x[key] and key not in ("metric", "summary", "interval"):
                    assert math.isclose(float(x[key]), float(y[key]), rel_tol=1e-12), (name, key, x, y)
                else:
                    assert x[key] == y[key], (name, key)
