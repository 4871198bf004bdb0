"""The logit lens (`logit_lens`) and its metrics (`laminae.metrics.lens`): every number against an
independent computation. The statistics against naive loops and scipy (log_softmax, entropy,
argmax, explicit bootstrap resamples); the whole lens against a plain forward of a tiny random
GPT-2 truncated after layer l (HF applies its final norm and lm_head); direct logit
attribution against the LayerNorm written out by hand (the parts plus the norm's bias sum to
the final logit); path length against pathlength's definition; the correlations against
scipy; streaming in uneven chunks equals one shot; max_tokens; refusals; figures and captions."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from laminae.errors import ConfigError
from laminae.metrics.lens import FinalReference, bootstrap_location, lens_stats, next_token_targets
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.store import ActivationWriter, read_tsv

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = discover()["logit_lens"]
UPSTREAM = "feedc0ffee"
WINDOWS = (6, 9, 7)            # 22 rows, 19 with a next token: chunk sizes 4 and 7 do not divide it
N_LAYERS, D_MODEL, VOCAB = 3, 16, 40
N_BOOTSTRAP, CONFIDENCE, SEED = 150, 0.9, 2
GRID = {"window": 1, "start": 2, "span": 5}


# ------------------------------------------------------------------------- metrics on their own
def test_next_token_targets_match_a_loop():
    window = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    position = np.array([0, 1, 2, 0, 1, 0, 0, 2])      # window 3 skips a position: no next token there
    token = np.arange(8) * 10 + 5
    expected = [token[i + 1] if i + 1 < 8 and window[i + 1] == window[i] and position[i + 1] == position[i] + 1
                else -1 for i in range(8)]
    assert next_token_targets(window, position, token).tolist() == expected
    assert next_token_targets(window[:1], position[:1], token[:1]).tolist() == [-1]


def test_lens_stats_match_scipy_and_loops():
    rng = np.random.default_rng(0)
    rows, vocab = 9, 30
    logits = rng.normal(scale=3, size=(rows, vocab)).astype(np.float32)
    logits[0, 5] = logits[0, 7] = logits[0].max() + 1          # a tie at the top: argmax takes 5
    final = rng.normal(scale=3, size=(rows, vocab)).astype(np.float32)
    final[1] = logits[1]                                       # identical distributions: KL 0, agreement
    targets = rng.integers(0, vocab, size=rows)
    stats = lens_stats(torch.from_numpy(logits), torch.from_numpy(targets), FinalReference.of(torch.from_numpy(final)))
    for t in range(rows):
        z, y = logits[t].astype(np.float64), targets[t]
        assert stats.rank[t] == 1 + sum(1 for v in range(vocab) if logits[t, v] > logits[t, y])
        assert stats.logprob[t] == pytest.approx(scipy.special.log_softmax(z)[y], abs=1e-12)
        p_final, p_layer = scipy.special.softmax(final[t].astype(np.float64)), scipy.special.softmax(z)
        assert stats.kl[t] == pytest.approx(scipy.stats.entropy(p_final, p_layer), rel=1e-9, abs=1e-12)
        top = max(range(vocab), key=lambda v: (logits[t, v], -v))
        assert stats.top1[t] == top
        assert stats.agree[t] == (top == int(np.argmax(final[t])))
    assert stats.top1[0] == 5 and stats.kl[1] == pytest.approx(0, abs=1e-12) and stats.agree[1]
    with pytest.raises(ValueError, match="must agree"):
        lens_stats(torch.from_numpy(logits), torch.from_numpy(targets[:3]), FinalReference.of(torch.from_numpy(final)))


@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_bootstrap_location_matches_explicit_resamples(statistic):
    values = np.random.default_rng(1).standard_cauchy(41)
    loc = bootstrap_location(values, statistic, n_bootstrap=300, confidence=0.9, seed=[4, 2], block_elements=100)
    draws = np.random.default_rng([4, 2]).integers(0, 41, size=(300, 41))     # one shot
    reduce = np.median if statistic == "median" else np.mean
    replicates = [reduce(values[d]) for d in draws]
    assert loc.value == pytest.approx(reduce(values)) and loc.n == 41
    assert (loc.ci_low, loc.ci_high) == pytest.approx(tuple(np.percentile(replicates, [5, 95])), rel=1e-12)
    empty = bootstrap_location(np.array([]), statistic, n_bootstrap=10, confidence=0.9, seed=0)
    assert math.isnan(empty.value) and empty.n == 0
    assert math.isnan(bootstrap_location(values, statistic, n_bootstrap=0, confidence=0.9, seed=0).ci_low)
    with pytest.raises(ValueError):
        bootstrap_location(np.array([1.0, np.nan]), statistic, n_bootstrap=10, confidence=0.9, seed=0)


# ------------------------------------------------------------------------- a tiny random GPT-2
class PlainReadout:
    """The readout API of laminae.models.readout, written out for GPT-2 with plain torch: ln_f
    then lm_head; direct logits with ln_f's scale frozen at the final residual."""

    def __init__(self, model: GPT2LMHeadModel):
        self.ln_f, self.lm_head = model.transformer.ln_f, model.lm_head
        self.vocab_size, self.d_model = model.config.vocab_size, model.config.n_embd

    @torch.no_grad()
    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(resid.float())).float()

    @torch.no_grad()
    def direct_logits(self, part: torch.Tensor, final_resid: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        sigma = torch.sqrt(final_resid.var(dim=-1, unbiased=False, keepdim=True) + self.ln_f.eps)
        centred = (part - part.mean(dim=-1, keepdim=True)) / sigma * self.ln_f.weight
        return (centred * self.lm_head.weight[token_ids]).sum(dim=-1)

    def decode(self, token_ids) -> list[str]:
        return [f"<{int(i)}>" for i in token_ids]


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=N_LAYERS, n_embd=D_MODEL, n_head=2, vocab_size=VOCAB, n_positions=32,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():   # non-trivial final norm: a scale and a bias
        model.transformer.ln_f.weight.uniform_(0.5, 1.5)
        model.transformer.ln_f.bias.normal_(0, 0.3)
    return model


def corpus_rows() -> list[dict]:
    rng = np.random.default_rng(5)
    return [{"document": "doc.txt", "window": w, "position": p, "token_id": int(rng.integers(0, VOCAB)),
             "token": f"t{p}"} for w, length in enumerate(WINDOWS) for p in range(length)]


@torch.no_grad()
def forward_sites(model: GPT2LMHeadModel, ids: list[int]) -> dict[str, np.ndarray]:
    """attn_out, mlp_out, resid_pre, resid_post of one window, each (n_layers, tokens, d_model)."""
    x = torch.tensor([ids])
    h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(len(ids))[None])
    out = {site: [] for site in ("attn_out", "mlp_out", "resid_pre", "resid_post")}
    for block in model.transformer.h:
        out["resid_pre"].append(h[0])
        attn = block.attn(block.ln_1(h))[0]
        mlp = block.mlp(block.ln_2(h + attn))
        h = h + attn + mlp
        out["attn_out"].append(attn[0]), out["mlp_out"].append(mlp[0]), out["resid_post"].append(h[0])
    return {site: torch.stack(values).numpy() for site, values in out.items()}


@pytest.fixture(scope="module")
def data(model) -> dict[str, np.ndarray]:
    rows = corpus_rows()
    windows = [[r["token_id"] for r in rows if r["window"] == w] for w in range(len(WINDOWS))]
    parts = [forward_sites(model, ids) for ids in windows]
    return {site: np.concatenate([p[site] for p in parts], axis=1).astype(np.float32) for site in parts[0]}


@torch.no_grad()
def truncated_logits(model: GPT2LMHeadModel, ids: list[int], layer: int) -> np.ndarray:
    """A plain forward of the model cut after block `layer`: HF applies ln_f and lm_head."""
    blocks = model.transformer.h
    try:
        model.transformer.h = blocks[: layer + 1]
        return model(torch.tensor([ids])).logits[0].double().numpy()
    finally:
        model.transformer.h = blocks


def write_store(out: Path, data: dict[str, np.ndarray]) -> Path:
    attrs = {"stage_hash": UPSTREAM, "model_id": "test", "family": "gpt2", "random_weights": True}
    n_rows = data["resid_post"].shape[1]
    with ActivationWriter(out, N_LAYERS, n_rows, attrs, config_text="stage: corpus.extract\n") as writer:
        for start in range(0, n_rows, 5):
            writer.write(start, {site: values[:, start : start + 5] for site, values in data.items()})
        writer.set_rows(corpus_rows(), ["document", "window", "position", "token_id", "token"])
    return out


def settings(**overrides) -> dict:
    return {"n_bootstrap": N_BOOTSTRAP, "confidence": CONFIDENCE, "seed": SEED, "max_tokens": None,
            "grid": dict(GRID), "during_extraction": False, **overrides}


def analyse(tmp_path: Path, data, model, monkeypatch, name: str = "metrics", chunk_rows: int | None = None,
            **overrides) -> Path:
    from laminae.experiments.logit_lens import analysis

    monkeypatch.setattr(analysis, "open_readout", lambda job: PlainReadout(model))
    store = tmp_path / "activations"
    if not store.exists():
        write_store(store, data)
    config = {"logit_lens": settings(**overrides), "stage": "logit_lens.analysis", "version": 1, "upstream": UPSTREAM}
    run_analysis(EXPERIMENT, {"stage": "logit_lens.analysis", "hash": "a1b2c3d4e5", "config": config}, store,
                 tmp_path / name, chunk_rows=chunk_rows)
    return tmp_path / name


def tokens_of(metrics: Path) -> dict[str, np.ndarray]:
    with h5py.File(metrics / "logit_lens_tokens.h5") as handle:
        return {name: handle[name][()] for name in handle}


@pytest.mark.parametrize("chunk_rows", [4, 7])
def test_lens_matches_truncated_forward(tmp_path, data, model, monkeypatch, chunk_rows):
    metrics = analyse(tmp_path, data, model, monkeypatch, chunk_rows=chunk_rows)
    assert sorted(p.name for p in metrics.iterdir()) == ["config.yaml", *sorted(EXPERIMENT.metrics)]
    got = tokens_of(metrics)
    rows = corpus_rows()
    expected_rows = [i for i in range(len(rows) - 1) if rows[i + 1]["window"] == rows[i]["window"]]
    assert got["row"].tolist() == expected_rows
    assert got["target"].tolist() == [rows[i + 1]["token_id"] for i in expected_rows]
    for w in range(len(WINDOWS)):
        window_rows = [i for i, r in enumerate(rows) if r["window"] == w]
        ids = [rows[i]["token_id"] for i in window_rows]
        final = scipy.special.log_softmax(truncated_logits(model, ids, N_LAYERS - 1), axis=-1)
        for layer in range(N_LAYERS):
            logprobs = scipy.special.log_softmax(truncated_logits(model, ids, layer), axis=-1)
            for p, row in enumerate(window_rows[:-1]):
                slot = expected_rows.index(row)
                y = ids[p + 1]
                assert got["logprob"][layer, slot] == pytest.approx(logprobs[p, y], abs=2e-5)
                assert got["rank"][layer, slot] == 1 + int((logprobs[p] > logprobs[p, y] + 1e-9).sum())
                kl = scipy.stats.entropy(np.exp(final[p]), np.exp(logprobs[p]))
                assert got["kl"][layer, slot] == pytest.approx(kl, abs=2e-5)
                assert got["top1"][layer, slot] == int(np.argmax(logprobs[p]))
                assert bool(got["agree"][layer, slot]) == (int(np.argmax(logprobs[p])) == int(np.argmax(final[p])))
    assert np.allclose(got["kl"][-1], 0, atol=1e-9) and got["agree"][-1].all()


def test_direct_logit_attribution_by_hand(tmp_path, data, model, monkeypatch):
    """Per part, the frozen-LayerNorm formula in float64 loops; the parts plus ln_f's bias
    through the unembedding give the final logit of the next token."""
    got = tokens_of(analyse(tmp_path, data, model, monkeypatch))
    gamma = model.transformer.ln_f.weight.detach().double().numpy()
    beta = model.transformer.ln_f.bias.detach().double().numpy()
    unembed = model.lm_head.weight.detach().double().numpy()           # (vocab, d_model)
    eps = model.transformer.ln_f.eps
    for slot, (row, y) in enumerate(zip(got["row"], got["target"])):
        final = data["resid_post"][-1, row].astype(np.float64)
        sigma = math.sqrt(final.var() + eps)

        def dla(vector):
            v = vector.astype(np.float64)
            return float(sum((v[i] - v.mean()) / sigma * gamma[i] * unembed[y, i] for i in range(D_MODEL)))

        assert got["dla_embed"][slot] == pytest.approx(dla(data["resid_pre"][0, row]), abs=1e-4)
        for layer in range(N_LAYERS):
            assert got["dla_attn"][layer, slot] == pytest.approx(dla(data["attn_out"][layer, row]), abs=1e-4)
            assert got["dla_mlp"][layer, slot] == pytest.approx(dla(data["mlp_out"][layer, row]), abs=1e-4)
        assert got["dla_rest"][slot] == pytest.approx(float(beta @ unembed[y]), abs=1e-4)
        assert got["final_logit"][slot] == pytest.approx(float(((final - final.mean()) / sigma * gamma + beta)
                                                               @ unembed[y]), abs=1e-4)


def test_table_summaries_and_correlations_match_scipy(tmp_path, data, model, monkeypatch):
    metrics = analyse(tmp_path, data, model, monkeypatch, chunk_rows=7)
    got = tokens_of(metrics)
    table = {(r["metric"], r["statistic"], int(r["layer"])): r for r in read_tsv(metrics / "logit_lens.tsv")}
    from laminae.experiments.logit_lens.analysis import SUMMARIES

    for index, (metric, statistic, name) in enumerate(SUMMARIES):
        for layer in range(N_LAYERS):
            values = got[name][layer].astype(np.float64)
            draws = np.random.default_rng([SEED, index]).integers(0, values.size, size=(N_BOOTSTRAP, values.size))
            reduce = np.median if statistic == "median" else np.mean
            low, high = np.percentile([reduce(values[d]) for d in draws], [5, 95])
            row = table[metric, statistic, layer]
            assert float(row["value"]) == pytest.approx(reduce(values), rel=1e-12, abs=1e-12)
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high), rel=1e-12, abs=1e-12)
            assert int(row["n"]) == values.size == 19
    assert float(table["dla_embed", "median", -1]["value"]) == pytest.approx(np.median(got["dla_embed"]))

    # path length: pathlength's cumulative path at the last layer, naive
    steps = np.linalg.norm(data["resid_post"].astype(np.float64) - data["resid_pre"], axis=-1)   # (n_layers, rows)
    np.testing.assert_allclose(got["path_length"], steps.sum(axis=0)[got["row"]], rtol=1e-12)
    correlations = {(r["method"], r["tokens"]): r for r in read_tsv(metrics / "logit_lens_pathlength.tsv")}
    final_logprob = got["logprob"][-1]
    for tokens, keep in (("all", np.ones(19, bool)), ("without_first", got["position"] > 0)):
        x, y = got["path_length"][keep], final_logprob[keep]
        assert int(correlations["pearson", tokens]["n"]) == keep.sum()
        assert float(correlations["pearson", tokens]["value"]) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
        assert float(correlations["spearman", tokens]["value"]) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
        assert correlations["spearman", tokens]["ci_low"] <= correlations["spearman", tokens]["ci_high"]
    assert (got["position"] > 0).sum() == 19 - len(WINDOWS)


def test_grid_decodes_the_configured_stretch(tmp_path, data, model, monkeypatch):
    metrics = analyse(tmp_path, data, model, monkeypatch)
    got = tokens_of(metrics)
    grid = read_tsv(metrics / "logit_lens_grid.tsv")
    assert len(grid) == N_LAYERS * GRID["span"]
    rows = corpus_rows()
    for cell in grid:
        layer, position = int(cell["layer"]), int(cell["position"])
        row = next(i for i, r in enumerate(rows) if r["window"] == GRID["window"] and r["position"] == position)
        slot = got["row"].tolist().index(row)
        assert GRID["start"] <= position < GRID["start"] + GRID["span"]
        assert cell["top1"] == f"<{got['top1'][layer, slot]}>" and cell["next_token"] == f"<{rows[row + 1]['token_id']}>"
        assert int(cell["rank"]) == got["rank"][layer, slot]


def test_max_tokens_keeps_the_first_tokens(tmp_path, data, model, monkeypatch):
    full = tokens_of(analyse(tmp_path, data, model, monkeypatch, name="full"))
    capped = tokens_of(analyse(tmp_path, data, model, monkeypatch, name="capped", chunk_rows=4, max_tokens=8))
    assert capped["row"].tolist() == full["row"][:8].tolist()
    for name in ("rank", "logprob", "kl", "top1", "dla_attn"):
        np.testing.assert_allclose(capped[name], full[name][:, :8], rtol=1e-6, atol=1e-6)


def test_bad_settings_fail_with_one_line_naming_the_key(tmp_path, data, model, monkeypatch):
    for overrides, key in (({"n_bootstrap": -1}, "logit_lens.n_bootstrap"), ({"confidence": 1.0}, "logit_lens.confidence"),
                           ({"max_tokens": 0}, "logit_lens.max_tokens"),
                           ({"grid": {"window": 9, "start": 0, "span": 4}}, "logit_lens.grid.window"),
                           ({"grid": {"window": 0, "start": 0, "span": 0}}, "logit_lens.grid.span")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            analyse(tmp_path, data, model, monkeypatch, name=f"bad-{key}", **overrides)


# ------------------------------------------------------------------------ figures, measures, needs
CONTEXT = {"model": "tiny-test", "random_weights": True, "corpus": "toy", "experiment": "logit_lens",
           "analysis": settings()}


def plot_stage(grid_colour="logprob") -> dict:
    config = {"plot": {"dpi": 40}, "logit_lens": {"plot": {"grid_colour": grid_colour}},
              "stage": "logit_lens.plot", "version": 1, "upstream": "a1b2c3d4e5"}
    return {"stage": "logit_lens.plot", "hash": "0123456789", "config": config}


def test_figures_measures_and_comparison(tmp_path, data, model, monkeypatch):
    from laminae.experiment import CompareJob, MeasureJob
    from laminae.experiments.logit_lens.figures import plot_grid, plot_profile
    from laminae.experiments.logit_lens.table import LensTable, read_grid
    from laminae.stages.figures import run_figures

    metrics = analyse(tmp_path, data, model, monkeypatch)
    written = run_figures(EXPERIMENT, plot_stage(), CONTEXT, metrics, tmp_path / "figures")
    expected = sorted([f"{f.name}.{ext}" for f in EXPERIMENT.figures for ext in ("png", "pdf")] + ["config.yaml"])
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == expected == sorted(p.name for p in written)
    table = LensTable.read(metrics / "logit_lens.tsv")
    fig, axes = plot_profile(table, CONTEXT, vocab_size=VOCAB)
    np.testing.assert_allclose(axes[0, 1].get_lines()[0].get_ydata(), table.get("logprob", "median"))
    assert axes[0, 0].get_yscale() == "log" and "RANDOM WEIGHTS" in fig.texts[0].get_text()
    fig, ax = plot_grid(read_grid(metrics / "logit_lens_grid.tsv"), CONTEXT, "rank", GRID["window"])
    assert len(ax.texts) == N_LAYERS * GRID["span"]
    with pytest.raises(ConfigError, match="logit_lens.plot.grid_colour"):
        run_figures(EXPERIMENT, plot_stage("colour"), CONTEXT, metrics, tmp_path / "bad")

    measured = EXPERIMENT.hook("measure")(MeasureJob(metrics, settings()))
    assert set(measured) == {m.name for m in EXPERIMENT.measures}
    np.testing.assert_allclose(measured["kl_median"].values, table.get("kl", "median"))
    np.testing.assert_allclose(measured["top1_agreement"].high, table.get("top1_agreement", "mean", "ci_high"))

    other = analyse(tmp_path, data, model, monkeypatch, name="other", seed=SEED + 1)
    comparison = EXPERIMENT.hook("compare")(CompareJob(metrics_dirs=[metrics, other], labels=["seed 2", "seed 3"],
                                                       settings=[settings(), settings(seed=SEED + 1)], plot={}))
    assert len(comparison.axes) == 3 and len(comparison.axes[1].get_lines()) == 2


def test_captions_render_to_valid_restructuredtext():
    """Every caption through Jinja (as Snakemake's report does) and docutils, errors fatal."""
    from types import SimpleNamespace

    import docutils.core
    import docutils.utils
    import jinja2

    for grid_colour in ("logprob", "rank"):
        stage = {"config": {"logit_lens": {"plot": {"grid_colour": grid_colour}},
                            "runs": [{"label": "model=a", "analysis": "0123456789"}]}}
        snakemake = SimpleNamespace(params=SimpleNamespace(context={**CONTEXT, "random_weights": False}, stage=stage),
                                    wildcards=SimpleNamespace(label="nietzsche"))
        for caption in [f.caption for f in EXPERIMENT.figures] + [EXPERIMENT.compare_caption]:
            text = jinja2.Template(EXPERIMENT.path(caption).read_text()).render(snakemake=snakemake)
            assert "tiny-test" in text or caption.endswith("compare.rst")
            docutils.core.publish_doctree(text, settings_overrides={
                "halt_level": docutils.utils.Reporter.WARNING_LEVEL, "report_level": 5})


def test_needs_a_readout_refused_for_an_encoder_and_skipped_in_a_sweep():
    from laminae.config import load_runs
    from laminae.workflow import WorkflowPlan

    assert EXPERIMENT.needs == ("readout",)
    with pytest.raises(ConfigError) as refused:
        load_runs(["model=minilm-l6", "experiments=[logit_lens]"], project_root=ROOT)
    assert str(refused.value).count("\n") == 0 and "logit_lens: an encoder (family bert)" in str(refused.value)
    plan = WorkflowPlan.from_snakemake_config({"overrides": ["experiments=[logit_lens,pathlength]"],
                                               "sweep": ["model=tiny-gpt2,minilm-l6"]}, ROOT)
    assert [list(run.experiments) for run in plan.runs] == [["logit_lens", "pathlength"], ["pathlength"]]
    assert plan.notes == ["logit_lens skipped for minilm-l6: an encoder (family bert) has no next-token readout"]


def test_claims_hold_on_a_falling_kl_and_fail_on_a_rising_one(tmp_path):
    """The two published trends judged on tables written for the purpose (8 layers)."""
    import yaml

    from laminae.claims import evaluate_claims
    from laminae.experiments.logit_lens.table import TABLE_COLUMNS, write_rows
    from laminae.stages.claims import measurements_of

    claims = yaml.safe_load((ROOT / "conf" / "logit_lens" / "default.yaml").read_text())["claims"]
    verdicts = {}
    for name, kl, agreement in (("holds", np.linspace(5, 0, 8), np.linspace(0.1, 1, 8)),
                                ("fails", np.linspace(0, 5, 8), np.linspace(1, 0.1, 8))):
        rows = [{"metric": metric, "statistic": statistic, "layer": layer, "value": value, "ci_low": value - 0.1,
                 "ci_high": value + 0.1, "n": 50}
                for metric, statistic, values in (("kl", "median", kl), ("top1_agreement", "mean", agreement))
                for layer, value in enumerate(values)]
        (tmp_path / name).mkdir()
        write_rows(tmp_path / name / "logit_lens.tsv", rows, TABLE_COLUMNS)
        measured = measurements_of(EXPERIMENT, tmp_path / name, settings())
        verdicts[name] = {r.claim: r.verdict for r in evaluate_claims(claims, measured)}
    assert verdicts["holds"] == {"kl_falls_with_depth": "holds", "agreement_rises_with_depth": "holds"}
    assert verdicts["fails"] == {"kl_falls_with_depth": "fails", "agreement_rises_with_depth": "fails"}


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_sweep_end_to_end_on_tiny_models_during_extraction_equals_two_stage(tmp_path, built_models):
    """Snakemake on tiny GPT-2, the lens run from the store and during extraction (a sweep):
    identical per-token values, the parts of the direct logit attribution sum to the final
    logit (no biases in this random model), and the sweep draws its comparison. (tiny-llama is
    saved without an LM head, so it has no readout.)"""
    import yaml

    from workflow_helpers import snakemake

    overrides = ["model=tiny-gpt2", "experiments=[logit_lens]", "corpus.max_tokens=48", "logit_lens.n_bootstrap=50",
                 "logit_lens.grid.span=8", "device=cpu", built_models]
    sweep = ["logit_lens.during_extraction=false,true"]
    snakemake(tmp_path, overrides, "--cores", "2", sweep=sweep)
    (folder,) = (tmp_path / "results" / "sweeps").glob("logit_lens-*")
    assert (folder / "compare_logit_lens.png").stat().st_size > 0
    runs = yaml.safe_load((folder / "sweep.yaml").read_text())["runs"]
    assert len(runs) == 2
    by_label = {run["label"]: tokens_of(tmp_path / run["metrics"]) for run in runs}
    stored, during = by_label["logit_lens.during_extraction=False"], by_label["logit_lens.during_extraction=True"]
    assert stored["row"].size == 47                             # 48 tokens in one window: 47 have a next one
    for name in ("rank", "top1", "target"):
        np.testing.assert_array_equal(during[name], stored[name])
    for name in ("logprob", "kl", "dla_attn", "dla_mlp", "dla_embed", "path_length"):
        np.testing.assert_allclose(during[name], stored[name], rtol=1e-5, atol=1e-5)
    parts = stored["dla_embed"] + stored["dla_attn"].sum(axis=0) + stored["dla_mlp"].sum(axis=0)
    np.testing.assert_allclose(parts, stored["final_logit"], atol=1e-3 * np.abs(stored["final_logit"]).max())
    assert np.allclose(stored["kl"][-1], 0, atol=1e-9)


@pytest.mark.parametrize("max_tokens", [None, 8])
def test_shards_absorbed_equal_one_run(tmp_path, data, model, max_tokens):
    """Two shards (at a window boundary) through partial(), absorbed by the whole run's reducer,
    give the unsharded run's per-token values and tables."""
    from laminae.experiment import ReducerJob
    from laminae.experiments.logit_lens.analysis import LogitLensReducer
    from laminae.store import RowTable

    rows = corpus_rows()
    widths = {site: D_MODEL for site in data}

    def reducer(out: Path, records: list[dict], start: int) -> LogitLensReducer:
        out.mkdir(parents=True)
        job = ReducerJob(settings=settings(max_tokens=max_tokens), rows=RowTable(records), n_layers=N_LAYERS,
                         widths=widths, model_attrs={}, out_dir=out, attrs={})
        return LogitLensReducer(job, readout=PlainReadout(model))

    def feed(r: LogitLensReducer, lo: int, hi: int) -> None:
        for s in range(lo, hi, 4):
            e = min(hi, s + 4)
            r.update(s - lo, {site: values[:, s:e] for site, values in data.items()})

    whole = reducer(tmp_path / "whole", rows, 0)
    feed(whole, 0, len(rows))
    whole.finish()
    cut = WINDOWS[0]                                         # shard 1: window 0; shard 2: the rest
    gather = reducer(tmp_path / "gather", rows, 0)
    for index, (lo, hi) in enumerate(((0, cut), (cut, len(rows)))):
        shard = reducer(tmp_path / f"shard{index}", rows[lo:hi], lo)
        feed(shard, lo, hi)
        shard.partial()
        gather.absorb(lo, tmp_path / f"shard{index}")
    gather.finish()
    a, b = tokens_of(tmp_path / "whole"), tokens_of(tmp_path / "gather")
    assert a["row"].size == (19 if max_tokens is None else 8)
    for name in ("rank", "top1", "agree", "row", "target"):
        np.testing.assert_array_equal(b[name], a[name])
    # float32 matrix products over other blocks of rows round differently (1e-9 here)
    for name in ("logprob", "kl", "dla_attn", "dla_mlp", "dla_embed", "dla_rest", "final_logit", "path_length"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-7)
    for table in ("logit_lens.tsv", "logit_lens_pathlength.tsv", "logit_lens_grid.tsv"):
        x, y = read_tsv(tmp_path / "gather" / table), read_tsv(tmp_path / "whole" / table)
        assert len(x) == len(y) and [list(r) for r in x] == [list(r) for r in y]
        for row_x, row_y in zip(x, y):
            for key in row_x:
                try:
                    assert float(row_x[key] or "nan") == pytest.approx(float(row_y[key] or "nan"), rel=1e-5, abs=1e-6,
                                                                       nan_ok=True), (table, key)
                except ValueError:
                    assert row_x[key] == row_y[key]


def test_resources_grow_with_tokens_and_are_capped_by_max_tokens():
    from laminae.experiment import JobShape

    hook = EXPERIMENT.hook("resources")
    shape = lambda rows: JobShape(n_layers=30, d_model=576, n_rows=rows, bytes_per_value=4, n_sites=4)  # noqa: E731
    cfg = lambda cap: {"logit_lens": settings(max_tokens=cap)}                                         # noqa: E731
    small, large = hook("analysis", shape(1000), cfg(None)), hook("analysis", shape(100_000), cfg(None))
    assert large["runtime"] > 10 * small["runtime"] and large["mem_mb"] >= small["mem_mb"]
    assert hook("analysis", shape(100_000), cfg(1000))["runtime"] < large["runtime"] / 10
    assert hook("plot", shape(100_000), cfg(None)) == {"mem_mb": 1024, "runtime": 5}
