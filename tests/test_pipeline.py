"""The whole pipeline through Snakemake on tiny-gpt2: layout, caching, provenance, and stored
activations against an independent NumPy GPT-2."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from laminae.config import load_runs
from laminae.store import ActivationStore
from reference_gpt2 import reference_gpt2_sites
from workflow_helpers import FAST, PROJECT_ROOT, scheduled_rules, snakemake

pytestmark = pytest.mark.slow
OVERRIDES = ["model=tiny-gpt2", *FAST]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One full run of both experiments; every test below inspects it."""
    workdir = tmp_path_factory.mktemp("pipeline")
    snakemake(workdir, OVERRIDES, "--cores", "2")
    return workdir


@pytest.fixture(scope="module")
def run():
    (run,) = load_runs(OVERRIDES, project_root=PROJECT_ROOT)
    return run


@pytest.mark.smoke
def test_every_output_exists_in_the_documented_layout(workdir, run):
    for experiment, files in {
        "qkv": ["qkv_laminar.tsv", "similarity.h5", "qkv_laminar.png", "qkv_laminar.pdf", "qkv_similarity.png"],
        "adjustments": ["adjustments.tsv", "adjustment_cosine.h5", "adjustments_laminar.png", "adjustments_hist.pdf",
                        "adjustments_norms.png"],
    }.items():
        extract = run.extraction(experiment)
        activations = workdir / extract.output_dir
        assert sorted(p.name for p in activations.glob("layer_*.h5")) == [f"layer_{i:02d}.h5" for i in range(4)]
        assert (activations / "rows.tsv").is_file() and (activations / "config.yaml").is_file()
        assert (workdir / extract.dir / "extract.log").is_file()
        for name in files:
            kind = "analysis" if name.endswith((".tsv", ".h5")) else "plot"
            path = workdir / run.stages[f"{experiment}.{kind}"].output_dir / name
            assert path.is_file() and path.stat().st_size > 0, path
        for stage in (extract, run.stages[f"{experiment}.analysis"], run.stages[f"{experiment}.plot"]):
            record = yaml.safe_load((workdir / stage.output_dir / "config.yaml").read_text())
            assert record["hash"] == stage.hash
            assert record["versions"]["laminae_version"]


@pytest.mark.smoke
def test_rerun_with_the_same_config_schedules_nothing(workdir):
    assert scheduled_rules(snakemake(workdir, OVERRIDES, "-n")) == {}


@pytest.mark.smoke
def test_plot_change_schedules_only_figure_jobs(workdir):
    dry = snakemake(workdir, [*OVERRIDES, "adjustments.plot.error_bar=sd"], "-n")
    assert scheduled_rules(dry) == {"adjustments_figures": 1, "all": 1}


@pytest.mark.smoke
def test_new_template_schedules_only_experiment_1(workdir):
    dry = snakemake(workdir, [*OVERRIDES, "template=mid_sentence"], "-n")
    assert scheduled_rules(dry) == {"extract": 1, "fidelity_figure": 1, "qkv_analysis": 1, "qkv_figures": 1, "qkv_claims": 1, "all": 1}


@pytest.mark.smoke
def test_hdf5_attributes_carry_provenance(workdir, run):
    stage = run.extraction("qkv")
    with h5py.File(workdir / stage.output_dir / "layer_03.h5") as handle:
        attrs = dict(handle.attrs)
    assert attrs["layer"] == 3 and attrs["n_layers"] == 4 and attrs["d_model"] == 64 and attrs["n_heads"] == 4
    assert attrs["stage_hash"] == stage.hash and attrs["model_id"].startswith("random:tiny-gpt2-")
    assert attrs["dtype"] == "float32" and attrs["random_weights"]
    for package in ("laminae", "torch", "transformers"):
        assert attrs[f"{package}_version"]
    assert yaml.safe_load(attrs["config_yaml"])["model"]["name"] == "tiny-gpt2"


def _reference(workdir: Path, input_ids: list[int]) -> dict[str, list[np.ndarray]]:
    (folder,) = (workdir / "models").glob("tiny-gpt2-*")
    return reference_gpt2_sites(load_file(folder / "model.safetensors"), n_heads=4, input_ids=input_ids)


@pytest.mark.smoke
def test_stimulus_activations_match_an_independent_numpy_gpt2(workdir, run):
    store = ActivationStore(workdir / run.extraction("qkv").output_dir)
    q, k, v = (store.read(site) for site in ("q", "k", "v"))  # (layers, words, 64)
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    for row in store.rows[::5]:
        reference = _reference(workdir, tokenizer(row["prompt"])["input_ids"])
        position, index = int(row["position"]), int(row["row"])
        for layer in range(4):
            for site, stored in (("q", q), ("k", k), ("v", v)):
                np.testing.assert_allclose(stored[layer, index], reference[site][layer][position], atol=2e-5, rtol=1e-4)


@pytest.mark.smoke
def test_corpus_activations_match_an_independent_numpy_gpt2(workdir, run):
    store = ActivationStore(workdir / run.extraction("adjustments").output_dir)
    token_ids = [int(t) for t in store.column("token_id")]
    reference = _reference(workdir, token_ids)  # the corpus fits one window
    assert set(store.column("window")) == {"0"}
    for site in ("attn_out", "mlp_out", "resid_pre", "resid_post"):
        stored = store.read(site)  # (layers, tokens, 64)
        for layer in range(4):
            np.testing.assert_allclose(stored[layer], reference[site][layer], atol=5e-5, rtol=1e-4)


def test_two_runs_give_identical_datasets(workdir, run, tmp_path):
    """Activations and metrics of both experiments: every file, every HDF5 dataset (values,
    dtype, shape) and attribute, every table and config.yaml byte for byte."""
    compared = [path for experiment in ("qkv", "adjustments")
                for path in (str(run.extraction(experiment).output_dir),
                             str(run.stages[f"{experiment}.analysis"].output_dir / "config.yaml"))]
    snakemake(tmp_path, OVERRIDES, "--cores", "2", *compared)  # rebuilds the random model from its seed too
    for experiment in ("qkv", "adjustments"):
        for stage in (run.extraction(experiment), run.stages[f"{experiment}.analysis"]):
            folder = stage.output_dir
            names = sorted(p.name for p in (workdir / folder).iterdir() if not p.name.startswith("."))
            assert names == sorted(p.name for p in (tmp_path / folder).iterdir() if not p.name.startswith("."))
            assert any(name.endswith(".h5") for name in names) and "config.yaml" in names, names
            for name in names:
                first, second = workdir / folder / name, tmp_path / folder / name
                if not name.endswith(".h5"):
                    assert first.read_bytes() == second.read_bytes(), first
                    continue
                with h5py.File(first) as a, h5py.File(second) as b:
                    assert sorted(a) == sorted(b) and len(a) > 0, first
                    for key in a:
                        x, y = a[key][()], b[key][()]
                        assert (x.dtype, x.shape) == (y.dtype, y.shape), f"{first}:{key}"
                        if not np.array_equal(x, y):
                            pytest.fail(_difference(f"{first}:{key}", x, y, workdir, tmp_path))
                    attrs_a, attrs_b = dict(a.attrs), dict(b.attrs)
                    assert sorted(attrs_a) == sorted(attrs_b), first
                    for key, value in attrs_a.items():
                        np.testing.assert_array_equal(value, attrs_b[key], err_msg=f"{first} attribute {key}")


def _difference(where: str, x: np.ndarray, y: np.ndarray, first: Path, second: Path) -> str:
    """What differs between two runs' arrays, for a failure to say more than "not equal": the
    rows, the largest difference, and whether the two runs built the same random model files."""
    rows = np.unique(np.nonzero(x != y)[0]) if x.ndim else np.array([0])
    gap = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.dtype.kind == "f" else None

    def models(workdir: Path) -> dict[str, str]:
        return {str(path.relative_to(workdir)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted((workdir / "models").rglob("*")) if path.is_file() and path.suffix != ".log"}

    return (f"{where}: {int(np.count_nonzero(x != y))} of {x.size} values differ, in rows {rows[:20].tolist()}"
            f"{' ...' if len(rows) > 20 else ''} of {len(x) if x.ndim else 1}; largest difference {gap}; "
            f"the two runs' model files {'are identical' if models(first) == models(second) else 'differ'}")


#: Run inside the report page once it has loaded: decode every result's image, list the
#: categories the report's navigation shows, and leave both as JSON in <pre id="probe">.
BROWSER_PROBE = """<script>
window.addEventListener("load", () => {
  const decoded = {};
  const images = Object.entries(results).map(([path, result]) => new Promise(resolve => {
    const image = new Image();
    image.onload = () => { decoded[path] = [image.naturalWidth, image.naturalHeight]; resolve(); };
    image.onerror = () => { decoded[path] = "not an image"; resolve(); };
    image.src = result.data_uri;
  }));
  Promise.all(images).then(() => {
    const shown = Object.keys(categories).filter(name => document.body.innerText.includes(name));
    const probe = document.createElement("pre");
    probe.id = "probe";
    probe.textContent = JSON.stringify({decoded, shown});
    document.body.appendChild(probe);
  });
});
</script>"""


def test_the_report_holds_every_figure_and_claims_table_and_renders_in_a_browser(workdir, run, tmp_path):
    import json
    import re
    import shutil
    import subprocess

    from laminae.api.plan import plan

    report = plan(OVERRIDES, project=PROJECT_ROOT, workdir=workdir).report()
    assert report.parent == workdir / "results" / "reports" and report.is_file()
    page = report.read_text(encoding="utf-8")
    results = json.loads(re.search(r'<script id="results">\s*var results = (.*?);?\s*</script>', page, re.S).group(1))
    expected = {str(path.relative_to(workdir)) for stage in run.stages.values() if stage.kind in ("plot", "claims")
                for path in (workdir / stage.output_dir).glob("*.png")}
    stores = [stage for stage in run.stages.values() if stage.kind == "extract"]
    expected |= {str((workdir / stage.dir / "fidelity.png").relative_to(workdir)) for stage in stores}
    declared = sum(len(e.figures) + 1 for e in run.experiments.values()) + len(stores)   # and each claims table
    assert len(expected) == declared and set(results) == expected
    assert "system-message" not in page and "System Message" not in page   # captions render without docutils warnings

    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no Chromium here to render the report (Debian: apt install chromium)")
    probed = tmp_path / "report.html"
    head, body_end, tail = page.rpartition("</body>")   # the last one: the page's own (a script holds another)
    probed.write_text(head + BROWSER_PROBE + body_end + tail, encoding="utf-8")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert set(found["decoded"]) == expected
    assert all(isinstance(size, list) and min(size) > 100 for size in found["decoded"].values()), found["decoded"]
    assert sorted(found["shown"]) == sorted([*(e.title for e in run.experiments.values()), "Fidelity"])
