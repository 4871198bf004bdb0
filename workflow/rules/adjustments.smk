# Experiment 2 (seed 003): attention vs MLP adjustments to the residual stream.
ADJ_EXTRACT = f"{RESULTS}/{{model}}/adjustments/{{label}}-{{xh}}"


rule adjustment_metrics:
    """Cosine(attn_out, mlp_out) per layer and token; per-layer summaries and norms."""
    input:
        activations=f"{ADJ_EXTRACT}/activations",
    output:
        table=f"{ADJ_EXTRACT}/analysis-{{ah}}/metrics/adjustments.tsv",
        cosine=f"{ADJ_EXTRACT}/analysis-{{ah}}/metrics/adjustment_cosine.h5",
        config=f"{ADJ_EXTRACT}/analysis-{{ah}}/metrics/config.yaml",
    log:
        f"{ADJ_EXTRACT}/analysis-{{ah}}/metrics.log",
    params:
        stage=lambda w: PLAN.stage_record(w.ah),
    resources:
        mem_mb=lambda w: PLAN.resources(w.ah)["mem_mb"],
        runtime=lambda w: PLAN.resources(w.ah)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/adjustment_metrics.py"


rule adjustment_figures:
    """Mean cosine per layer with error bars, the histogram of all values, adjustment norms."""
    input:
        table=rules.adjustment_metrics.output.table,
        cosine=rules.adjustment_metrics.output.cosine,
    output:
        laminar_png=report(f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/adjustments_laminar.png",
                           caption="../report/adjustments_laminar.rst", category="Experiment 2: adjustments",
                           subcategory="{model}", labels={"model": "{model}", "inputs": "{label}", "figure": "laminar profile", "run": "{ph}"}),
        laminar_pdf=f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/adjustments_laminar.pdf",
        hist_png=report(f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/adjustments_hist.png",
                        caption="../report/adjustments_hist.rst", category="Experiment 2: adjustments",
                        subcategory="{model}", labels={"model": "{model}", "inputs": "{label}", "figure": "histogram", "run": "{ph}"}),
        hist_pdf=f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/adjustments_hist.pdf",
        norms_png=report(f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/adjustments_norms.png",
                         caption="../report/adjustments_norms.rst", category="Experiment 2: adjustments",
                         subcategory="{model}", labels={"model": "{model}", "inputs": "{label}", "figure": "norms", "run": "{ph}"}),
        norms_pdf=f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/adjustments_norms.pdf",
        config=f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/config.yaml",
    log:
        f"{ADJ_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures.log",
    params:
        stage=lambda w: PLAN.stage_record(w.ph),
        context=lambda w: PLAN.context(w.ph),
    resources:
        mem_mb=lambda w: PLAN.resources(w.ph)["mem_mb"],
        runtime=lambda w: PLAN.resources(w.ph)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/adjustment_figures.py"
