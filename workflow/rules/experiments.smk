# One analysis, figure and compare rule per enabled experiment, all from the experiment's
# declaration (laminae.experiment.Experiment): its metrics files, its figures with their report
# captions, its comparison of a sweep's runs; and, for an experiment whose config group holds
# claims (<experiment>.claims), one more that judges them on its metrics; in a sweep, for an
# experiment that declares an analysis across runs (Experiment.across), one that reads their stores.
# Rule names are <experiment>_analysis, <experiment>_figures, <experiment>_claims,
# <experiment>_compare, <experiment>_across; a run
# whose settings enable a variant of the experiment (extra outputs, e.g. per-head tables) gets
# <experiment>_analysis_<variant>, ...
import os


def _caption(experiment, relative):
    """A caption of the experiment's folder, as a path relative to this file's folder."""
    return os.path.relpath(experiment.path(relative), Path(workflow.current_basedir))


_compare_rules, _training_rules = set(), set()
for _experiment, _variants in PLAN.rule_variants():
    _name, _suffix = _experiment.name, _experiment.rule_suffix(_variants)
    _folder = _experiment.folder_name(_variants)
    _analysis = f"{RESULTS}/{{model}}/{_experiment.inputs}/{{label}}-{{xh}}/{_folder}/analysis-{{ah}}"
    _figures = f"{_analysis}/plot-{{ph}}"
    _metrics = _experiment.metrics_for(_variants)
    _figure_list = _experiment.figures_for(_variants)

    rule:
        """Activations -> the experiment's metrics files (laminae.stages.analysis)."""
        name:
            f"{_name}_analysis{_suffix}"
        input:
            activations=f"{RESULTS}/{{model}}/{_experiment.inputs}/{{label}}-{{xh}}/activations",
        output:
            **{f"metrics{i}": f"{_analysis}/metrics/{file}" for i, file in enumerate(_metrics)},
            config=f"{_analysis}/metrics/config.yaml",
        log:
            f"{_analysis}/metrics.log",
        params:
            experiment=_name,
            stage=lambda w: PLAN.stage_record(w.ah),
        resources:
            mem_mb=lambda w: PLAN.resources(w.ah)["mem_mb"],
            runtime=lambda w: PLAN.resources(w.ah)["runtime"],
        conda:
            "../../envs/laminae.yaml"
        script:
            "../scripts/analysis.py"

    rule:
        """Metrics -> the experiment's figures (laminae.stages.figures)."""
        name:
            f"{_name}_figures{_suffix}"
        input:
            metrics=[f"{_analysis}/metrics/{file}" for file in (*_metrics, "config.yaml")],
        output:
            **{f"{figure.name}_png": report(f"{_figures}/figures/{figure.name}.png",
                                            caption=_caption(_experiment, figure.caption),
                                            category=_experiment.title, subcategory="{model}",
                                            labels={"model": "{model}", "inputs": "{label}",
                                                    "figure": figure.label, "run": "{ph}"})
               for figure in _figure_list},
            **{f"{figure.name}_pdf": f"{_figures}/figures/{figure.name}.pdf" for figure in _figure_list},
            config=f"{_figures}/figures/config.yaml",
        log:
            f"{_figures}/figures.log",
        params:
            experiment=_name,
            stage=lambda w: PLAN.stage_record(w.ph),
            context=lambda w: PLAN.context(w.ph),
        resources:
            mem_mb=lambda w: PLAN.resources(w.ph)["mem_mb"],
            runtime=lambda w: PLAN.resources(w.ph)["runtime"],
        conda:
            "../../envs/laminae.yaml"
        script:
            "../scripts/figures.py"

    if PLAN.judges_claims(_experiment, _variants):
        _claims = f"{_analysis}/claims-{{kh}}"

        rule:
            """Metrics -> the verdicts of the experiment's claims (laminae.stages.claims)."""
            name:
                f"{_name}_claims{_suffix}"
            input:
                metrics=[f"{_analysis}/metrics/{file}" for file in (*_metrics, "config.yaml")],
            output:
                table=f"{_claims}/claims/claims.tsv",
                summary=f"{_claims}/claims/summary.txt",
                png=report(f"{_claims}/claims/claims.png", caption="../report/claims.rst",
                           category=_experiment.title, subcategory="{model}",
                           labels={"model": "{model}", "inputs": "{label}", "figure": "claims", "run": "{kh}"}),
                pdf=f"{_claims}/claims/claims.pdf",
                config=f"{_claims}/claims/config.yaml",
            log:
                f"{_claims}/claims.log",
            params:
                experiment=_name,
                stage=lambda w: PLAN.stage_record(w.kh),
                context=lambda w: PLAN.context(w.kh),
            resources:
                mem_mb=lambda w: PLAN.resources(w.kh)["mem_mb"],
                runtime=lambda w: PLAN.resources(w.kh)["runtime"],
            conda:
                "../../envs/laminae.yaml"
            script:
                "../scripts/claims.py"

    if _experiment.compare is not None and _experiment.name not in _compare_rules:
        _compare_rules.add(_experiment.name)

        rule:
            """The runs of a sweep overlaid (laminae.stages.compare)."""
            name:
                f"{_name}_compare"
            input:
                metrics=lambda w: [f"{folder}/config.yaml" for folder in PLAN.comparisons[w.ch].metrics],
            output:
                png=report(f"{RESULTS}/sweeps/{_name}-{{ch}}/compare_{_name}.png",
                           caption=_caption(_experiment, _experiment.compare_caption or _experiment.figures[0].caption),
                           category="Sweep comparisons", labels={"experiment": _name, "figure": "runs overlaid",
                                                                 "run": "{ch}"}),
                pdf=f"{RESULTS}/sweeps/{_name}-{{ch}}/compare_{_name}.pdf",
                record=f"{RESULTS}/sweeps/{_name}-{{ch}}/sweep.yaml",
            log:
                f"{RESULTS}/sweeps/{_name}-{{ch}}/compare.log",
            params:
                experiment=_name,
                stage=lambda w: PLAN.comparison_record(w.ch),
            resources:
                mem_mb=2000,
                runtime=10,
            conda:
                "../../envs/laminae.yaml"
            script:
                "../scripts/compare.py"

    if any(c.experiment == _name and c.across_training for c in PLAN.comparisons.values()) \
            and _name not in _training_rules:
        _training_rules.add(_name)

        rule:
            """A sweep over training checkpoints: the headline metrics per checkpoint and layer."""
            name:
                f"{_name}_training"
            input:
                metrics=lambda w: [f"{folder}/config.yaml" for folder in PLAN.comparisons[w.ch].metrics],
            output:
                png=report(f"{RESULTS}/sweeps/{_name}-{{ch}}/training_{_name}.png", caption="../report/training.rst",
                           category="Sweep comparisons", labels={"experiment": _name, "figure": "across training",
                                                                 "run": "{ch}"}),
                pdf=f"{RESULTS}/sweeps/{_name}-{{ch}}/training_{_name}.pdf",
            log:
                f"{RESULTS}/sweeps/{_name}-{{ch}}/training.log",
            params:
                experiment=_name,
                stage=lambda w: PLAN.comparison_record(w.ch),
            resources:
                mem_mb=2000,
                runtime=10,
            conda:
                "../../envs/laminae.yaml"
            script:
                "../scripts/training.py"


for _experiment in {cross.experiment: PLAN.experiments[cross.experiment] for cross in PLAN.cross_runs.values()}.values():
    _name = _experiment.name
    _across = f"{RESULTS}/sweeps/{_name}-across-{{ch}}"

    rule:
        """Several runs' activation stores, rows matched -> metrics and figures (laminae.stages.across)."""
        name:
            f"{_name}_across"
        input:
            stores=lambda w: PLAN.cross_runs[w.ch].stores,
        output:
            **{f"metrics{i}": f"{_across}/metrics/{file}" for i, file in enumerate(_experiment.across.metrics)},
            config=f"{_across}/metrics/config.yaml",
            **{f"{figure.name}_png": report(f"{_across}/figures/{figure.name}.png",
                                            caption=_caption(_experiment, figure.caption),
                                            category="Across runs", subcategory=_experiment.title,
                                            labels={"experiment": _name, "figure": figure.label, "run": "{ch}"})
               for figure in _experiment.across.figures},
            **{f"{figure.name}_pdf": f"{_across}/figures/{figure.name}.pdf" for figure in _experiment.across.figures},
        log:
            f"{_across}/across.log",
        params:
            experiment=_name,
            stage=lambda w: PLAN.cross_runs[w.ch].record(),
        resources:
            mem_mb=lambda w: PLAN.across_resources(w.ch)["mem_mb"],
            runtime=lambda w: PLAN.across_resources(w.ch)["runtime"],
        conda:
            "../../envs/laminae.yaml"
        script:
            "../scripts/across.py"
