# Experiment 1 (seed 000): RSA and category selectivity of Q, K, V per layer.
QKV_EXTRACT = f"{RESULTS}/{{model}}/qkv/{{label}}-{{xh}}"


rule qkv_metrics:
    """Similarity matrices, selectivity with a permutation null, RSA with bootstrap CIs."""
    input:
        activations=f"{QKV_EXTRACT}/activations",
    output:
        table=f"{QKV_EXTRACT}/analysis-{{ah}}/metrics/qkv_laminar.tsv",
        similarity=f"{QKV_EXTRACT}/analysis-{{ah}}/metrics/similarity.h5",
        config=f"{QKV_EXTRACT}/analysis-{{ah}}/metrics/config.yaml",
    log:
        f"{QKV_EXTRACT}/analysis-{{ah}}/metrics.log",
    params:
        stage=lambda w: PLAN.stage_record(w.ah),
    resources:
        mem_mb=lambda w: PLAN.resources(w.ah)["mem_mb"],
        runtime=lambda w: PLAN.resources(w.ah)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/qkv_metrics.py"


rule qkv_figures:
    """Laminar profile (RSA, selectivity, per-category selectivity) and similarity matrices."""
    input:
        table=rules.qkv_metrics.output.table,
        similarity=rules.qkv_metrics.output.similarity,
    output:
        laminar_png=report(f"{QKV_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/qkv_laminar.png",
                           caption="../report/qkv_laminar.rst", category="Experiment 1: Q, K, V",
                           subcategory="{model}", labels={"model": "{model}", "inputs": "{label}", "figure": "laminar profile", "run": "{ph}"}),
        laminar_pdf=f"{QKV_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/qkv_laminar.pdf",
        similarity_png=report(f"{QKV_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/qkv_similarity.png",
                              caption="../report/qkv_similarity.rst", category="Experiment 1: Q, K, V",
                              subcategory="{model}", labels={"model": "{model}", "inputs": "{label}", "figure": "similarity matrices", "run": "{ph}"}),
        similarity_pdf=f"{QKV_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/qkv_similarity.pdf",
        config=f"{QKV_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures/config.yaml",
    log:
        f"{QKV_EXTRACT}/analysis-{{ah}}/plot-{{ph}}/figures.log",
    params:
        stage=lambda w: PLAN.stage_record(w.ph),
        context=lambda w: PLAN.context(w.ph),
    resources:
        mem_mb=lambda w: PLAN.resources(w.ph)["mem_mb"],
        runtime=lambda w: PLAN.resources(w.ph)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/qkv_figures.py"
