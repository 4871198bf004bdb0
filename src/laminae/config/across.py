"""Plan the analyses across runs of a sweep (`Experiment.across`): which runs each compares, how
their rows are matched, and the folder its outputs go to.

    >>> [cross] = plan_across(runs, registry["cka"], "results")     # runs: load_runs(..., sweep=[...])
    >>> cross.config["runs"]            # [{"label": "model=smollm2-135m", "extraction": "<hash>"}, ...]
    >>> cross.dir                       # results/sweeps/cka-across-<hash>
    >>> cross.files                     # metrics/<files>, metrics/config.yaml, figures/<name>.png|pdf

One stage per group of runs that enable the experiment with the same analysis settings and read
different extractions (two runs of one extraction hold the same activations: the first is
kept). Its hash covers the experiment's version and settings, the runs' extraction hashes (so
their weights and inputs) and labels, the matching rule and the figure settings. Rows are
matched by what they are: stimuli by word, so every run must read the same stimuli (templates
and positions may differ); a corpus by text, so every run must read the same corpus, and its
tokens are aggregated to the words they share (by character offsets: tokenizers differ).
Runs that cannot be matched stop here, before any job, in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laminae.config.keys import stable_hash
from laminae.config.stages import Run, analysis_settings
from laminae.errors import ConfigError
from laminae.experiment import Experiment

#: How rows are matched across runs, per input kind (written into every output).
MATCH_RULES = {
    "stimuli": "stimuli: one row per word in every run, matched by the word",
    "corpus": "corpus: each run's tokens aggregated (mean) to the words of the text they cover, matched by the "
              "word's character span in its document",
}
#: The config keys of an extraction that must agree for its rows to be matched across runs.
MATCHED_BY = {"stimuli": ("stimuli",), "corpus": ("corpus", "files_digest")}


@dataclass(frozen=True)
class CrossRun:
    """One experiment's analysis across runs: `<results>/sweeps/<experiment>-across-<hash>/`."""

    experiment: str
    hash: str
    config: dict[str, Any]        # stage, experiment, settings, runs [{label, extraction}], inputs, match, plot
    stores: list[str]             # each run's activations folder, in `config["runs"]` order
    dir: Path
    metrics: tuple[str, ...]
    figures: tuple[str, ...]

    @property
    def files(self) -> list[str]:
        """Every output: the metrics files with their config.yaml, the figures (png and pdf)."""
        return ([str(self.dir / "metrics" / name) for name in (*self.metrics, "config.yaml")]
                + [str(self.dir / "figures" / f"{name}.{ext}") for name in self.figures for ext in ("png", "pdf")])

    def record(self) -> dict[str, Any]:
        """`params.stage` of its rule."""
        return {"stage": self.config["stage"], "hash": self.hash, "config": self.config}


def plan_across(runs: Sequence[Run], experiment: Experiment, results_dir: str | Path,
                steps: Any = None) -> list[CrossRun]:
    """The cross-run stages of `experiment` over `runs` (see the module docstring); `steps`, a
    function of the runs' distinguishing overrides giving their training steps or None
    (`laminae.workflow.training_steps`), marks a sweep over checkpoints."""
    assert experiment.across is not None
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if experiment.name in run.experiments:
            kind = run.experiments[experiment.name].inputs
            groups.setdefault((kind, stable_hash(analysis_settings(run.config, experiment))), []).append(run)
    planned = []
    for members in groups.values():
        experiment = members[0].experiments[experiment.name]     # on the inputs these runs read
        distinct: dict[str, Run] = {}
        for run in members:
            distinct.setdefault(run.extraction(experiment.name).hash, run)
        if len(distinct) < 2:
            continue
        chosen = list(distinct.values())
        _check_matchable(chosen, experiment)
        distinguishing = [[o for o in run.overrides if not all(o in other.overrides for other in chosen)]
                          for run in chosen]
        first = chosen[0].config
        config = {"stage": f"{experiment.name}.across", "experiment": experiment.name,
                  "experiment_version": experiment.version, "settings": analysis_settings(first, experiment),
                  "inputs": experiment.inputs, "match": MATCH_RULES[experiment.inputs],
                  "runs": [{"label": " ".join(words) or run.label, "model": run.config["model"]["name"],
                            "extraction": hash_}
                           for (hash_, run), words in zip(distinct.items(), distinguishing)],
                  "plot": {"dpi": first["plot"]["dpi"], experiment.name: first[experiment.name].get("plot", {})}}
        checkpoints = steps(distinguishing) if steps is not None else None
        if checkpoints is not None:
            config["steps"] = checkpoints
        digest = stable_hash(config)
        stores = [str(run.extraction(experiment.name).output_dir) for run in chosen]
        planned.append(CrossRun(experiment.name, digest, config, stores,
                                Path(results_dir) / "sweeps" / f"{experiment.name}-across-{digest}",
                                tuple(experiment.across.metrics), tuple(f.name for f in experiment.across.figures)))
    return planned


def _check_matchable(runs: Sequence[Run], experiment: Experiment) -> None:
    """The runs read the same stimuli (or corpus): else one ConfigError naming the key."""
    for key in MATCHED_BY[experiment.inputs]:
        values = [run.extraction(experiment.name).config.get(key) for run in runs]
        if any(value != values[0] for value in values[1:]):
            shown = key if key != "files_digest" else "corpus.path"
            raise ConfigError(shown, f"the same {experiment.inputs} in every run of the sweep, so that "
                                     f"{experiment.name}'s analysis across runs can match their rows "
                                     f"({MATCH_RULES[experiment.inputs]})",
                              f"{len({stable_hash(v) for v in values})} different values across the runs "
                              f"({', '.join(run.label for run in runs)})")

