# Sweeps: one figure per experiment overlaying the laminar curves of every run.


rule compare:
    """Overlay the runs of a sweep (x = relative depth when the models' depths differ)."""
    input:
        tables=lambda w: PLAN.comparisons[w.ch].tables,
    output:
        png=report(f"{RESULTS}/sweeps/{{experiment}}-{{ch}}/compare_{{experiment}}.png",
                   caption="../report/compare.rst", category="Sweep comparisons",
                   labels={"experiment": "{experiment}", "figure": "runs overlaid", "run": "{ch}"}),
        pdf=f"{RESULTS}/sweeps/{{experiment}}-{{ch}}/compare_{{experiment}}.pdf",
        record=f"{RESULTS}/sweeps/{{experiment}}-{{ch}}/sweep.yaml",
    log:
        f"{RESULTS}/sweeps/{{experiment}}-{{ch}}/compare.log",
    params:
        stage=lambda w: PLAN.comparison_record(w.ch),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/compare.py"
