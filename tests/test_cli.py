"""The `laminae` command (laminae.cli): runs, show, where, config; one-line errors. Fast tests
call main() on synthetic folders; the slow ones run the command as a process on a real run."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from laminae.cli import main
from laminae.workflow import WorkflowPlan
from test_api import fake_results
from workflow_helpers import PROJECT_ROOT, TINY_QKV_RUN, snakemake

OVERRIDES = TINY_QKV_RUN


def laminae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laminae.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_the_console_script_is_declared():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["laminae"] == "laminae.cli:main"


def test_runs_lists_and_filters(tmp_path, capsys):
    fake_results(tmp_path / "results")
    assert main(["runs", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "1111111111" in out and "4444444444" in out and "5555555555" in out
    assert "3 run(s)" in out and "2 partial" in out and "qkv.n_permutations=50" in out
    assert main(["runs", "--results", str(tmp_path / "results"), "status=complete", "--paths"]) == 0
    out = capsys.readouterr().out
    assert "1111111111" in out and "4444444444" not in out and "analysis-1111111111" in out
    assert main(["runs", "--results", str(tmp_path / "results"), "qkv.n_permutations=50", "--tsv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run\tmodel\t") and len(lines) == 2 and lines[1].startswith("4444444444\t")


@pytest.mark.parametrize("args, message", [
    (["runs", "modle=m1"], "laminae: no column or config key 'modle'"),
    (["runs", "experiment"], "laminae: filter 'experiment': expected KEY=VALUE"),
    (["show", "999"], "laminae: no run '999'"),
    (["where", "qkv.n_permutations=-5"], "laminae: config key 'qkv.n_permutations': expected an integer >= 0, got -5"),
])
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    fake_results(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--results", "results"] if args[0] != "where" else [*args, "--project", str(PROJECT_ROOT)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1 and captured.out == ""


def test_show_a_synthetic_run(tmp_path, capsys):
    fake_results(tmp_path / "results")
    assert main(["show", "444", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "run 4444444444: qkv on m1 (stimuli/words.t), partial" in out
    assert "partial: " in out and "n_permutations: 50" in out and "claims: none judged" in out


def test_where_prints_the_plans_paths(tmp_path, capsys):
    assert main(["where", "model=tiny-gpt2", "experiments=[qkv]", "--project", str(PROJECT_ROOT),
                 "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    plan = WorkflowPlan.from_snakemake_config({"overrides": ["model=tiny-gpt2", "experiments=[qkv]"]}, PROJECT_ROOT)
    for stage in plan.stages.values():
        assert f"missing  {tmp_path / stage.output_dir}" in out
    assert "0 of 4 outputs exist" in out


def test_config_lists_the_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the checkout is found from the installed package
    assert main(["config", "model=tiny-gpt2"]) == 0
    assert "qkv.n_permutations" in capsys.readouterr().out
    assert main(["config", "model=nope"]) == 1
    assert capsys.readouterr().err.startswith("laminae: config key 'model'")


def test_report_paths_are_named_by_the_config():
    from laminae.api.plan import plan

    assert plan(["model=tiny-gpt2"], project=PROJECT_ROOT).report_path == Path("results/reports/model=tiny-gpt2.html")
    swept = plan(["model=tiny-gpt2"], ["qkv.zscore=true,false"], project=PROJECT_ROOT, workdir="w")
    assert swept.report_path == Path("w/results/reports/model=tiny-gpt2_sweep_qkv.zscore=true,false.html")
    long = plan(["model=tiny-gpt2", *[f"qkv.n_permutations={n}" for n in range(10, 30)]], project=PROJECT_ROOT)
    assert len(long.report_path.name) < 90 and long.report_path.name.startswith("model=tiny-gpt2_qkv.n_perm")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_run) -> Path:
    """A copy of one run of experiment 1 on tiny-gpt2 (test_bad_inputs.py's `finished` too)."""
    return shared_run(OVERRIDES, tmp_path_factory.mktemp("cli") / "work")


@pytest.mark.slow
def test_the_run_ends_with_its_verdicts_and_where_its_figures_are(workdir, monkeypatch):
    from laminae.api.summary import end_of_run

    plan = WorkflowPlan.from_snakemake_config({"overrides": OVERRIDES}, PROJECT_ROOT)
    (run,) = plan.runs
    claims = (workdir / run.stages["qkv.claims"].output_dir / "claims.tsv").read_text().splitlines()[1:]
    verdicts = [line.split("\t")[7] for line in claims]
    monkeypatch.chdir(workdir)
    text = end_of_run(plan, OVERRIDES)
    counted = {verdict: verdicts.count(verdict) for verdict in ("holds", "fails", "undecided", "not applicable")}
    line = next(line for line in text.splitlines() if line.strip().startswith("qkv "))
    assert line.split(None, 1)[1] == (f"{len(verdicts)} claims: {counted['holds']} hold{'s' if counted['holds'] == 1 else ''}, "
                                      f"{counted['fails']} fail{'s' if counted['fails'] == 1 else ''}, "
                                      f"{counted['undecided']} undecided, {counted['not applicable']} not applicable")
    assert f"figures: {run.stages['qkv.plot'].output_dir}" in text
    assert text.splitlines()[-1].endswith("report " + " ".join(shlex.quote(o) for o in OVERRIDES))
    finished = snakemake(workdir, OVERRIDES, "--cores", "1", "--forcerun", "qkv_figures")   # a real run prints it last
    assert "figures: " in finished.stderr and finished.stderr.index("laminae: 1 run done") > finished.stderr.index("Finished")


@pytest.mark.slow
def test_gc_lists_what_no_kept_config_needs_and_removes_it_only_when_asked(workdir):
    other = [*OVERRIDES[:-1], "qkv.n_permutations=30", "experiments=[qkv]"]
    snakemake(workdir, other, "--cores", "2")
    (run,) = WorkflowPlan.from_snakemake_config({"overrides": other}, PROJECT_ROOT).runs
    extra = run.stages["qkv.analysis"].dir   # its plot and claims nest inside it
    size = sum(path.stat().st_size for path in (workdir / extra).rglob("*") if path.is_file())
    keep = " ".join(OVERRIDES).replace("[qkv]", "'[qkv]'")
    listed = laminae("gc", "--keep", keep, cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if str(extra) in line]
    assert "qkv.analysis" in row and "1 folder(s) no kept config needs" in listed.stdout
    from laminae.disk import size_text

    assert row.split()[0] + " " + row.split()[1] == size_text(size) and (workdir / extra).is_dir()
    both = laminae("gc", "--keep", keep, "--keep", " ".join(other).replace("[qkv]", "'[qkv]'"), cwd=workdir)
    assert both.stdout.strip() == "every result folder is needed by a kept config"
    lock = workdir / ".snakemake" / "locks" / "0.input.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    refused = laminae("gc", "--keep", keep, "--delete", cwd=workdir)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "holds its lock" in refused.stderr
    assert (workdir / extra).is_dir()
    lock.unlink()
    removed = laminae("gc", "--keep", keep, "--delete", cwd=workdir)
    assert removed.returncode == 0 and not (workdir / extra).exists()
    assert "4 of 4 outputs exist" in laminae("where", *OVERRIDES, cwd=workdir).stdout


@pytest.mark.slow
def test_commands_on_a_real_run(workdir):
    (run,) = WorkflowPlan.from_snakemake_config({"overrides": OVERRIDES}, PROJECT_ROOT).runs
    analysis = run.stages["qkv.analysis"]
    listed = laminae("runs", cwd=workdir)
    assert listed.returncode == 0 and analysis.hash in listed.stdout and "complete" in listed.stdout
    shown = laminae("show", analysis.hash[:6], cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    claims = (workdir / run.stages["qkv.claims"].output_dir / "claims.tsv").read_text().splitlines()[1:]
    for line in claims:
        claim, verdict = line.split("\t")[0], line.split("\t")[7]
        assert any(verdict in text and claim in text for text in shown.stdout.splitlines()), (claim, verdict)
    assert "rsa:q-k" in shown.stdout and "n_permutations: 20" in shown.stdout
    where = laminae("where", *OVERRIDES, cwd=workdir)
    assert where.returncode == 0, where.stderr
    for stage in run.stages.values():
        assert f"exists   {stage.output_dir}" in where.stdout
    assert "4 of 4 outputs exist" in where.stdout
    bad = laminae("show", "ffffff", cwd=workdir)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("laminae: no run")
    script = Path(sys.executable).with_name("laminae")
    if script.is_file():   # make install's console script
        assert subprocess.run([str(script), "runs"], cwd=workdir, capture_output=True, text=True).stdout == listed.stdout
