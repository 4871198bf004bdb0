# Extraction: model + inputs -> activations/ (layer_NN.h5 of the sites the experiments reading
# these inputs need, rows.tsv, reductions/ of those that run during extraction), shared by every
# experiment on them: one job, or with corpus.shards=N N shard jobs and a gather (rule `gather`).
EXTRACTION = f"{RESULTS}/{{model}}/{{inputs}}/{{label}}-{{xh}}"
from laminae.workflow import EXTRACT_THREADS  # noqa: E402

# Building a random model and drawing a store's fidelity figure take seconds: on a cluster they
# run in the submitting process rather than waiting in the queue as jobs of their own.
localrules:
    random_model,
    fidelity_figure,


rule random_model:
    """Build a random-init model (tiny-gpt2, tiny-llama) once, deterministically from its seed."""
    output:
        directory(f"{PLAN.models_dir}/{{folder}}"),
    log:
        f"{PLAN.models_dir}/logs/{{folder}}.log",
    params:
        stage=lambda w: {"stage": "model.build", "hash": w.folder, "config": PLAN.random_model_config(w.folder)},
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/build_random_model.py"


rule extract:
    """Forward the model over the inputs; hook and store every layer's sites (laminae.stages.extract)."""
    input:
        unpack(lambda w: PLAN.source_inputs(w.xh)),
    output:
        directory(f"{EXTRACTION}/activations"),
    log:
        f"{EXTRACTION}/extract.log",
    params:
        stage=lambda w: PLAN.stage_record(w.xh),
        weights=lambda w: PLAN.weights(w.xh),   # changed weights rerun the extraction
    wildcard_constraints:
        xh=PLAN.extraction_hashes(gathered=False),
    threads: EXTRACT_THREADS
    resources:
        gpu=lambda w: PLAN.wants_gpu(w.xh),
        mem_mb=lambda w: PLAN.resources(w.xh)["mem_mb"],
        runtime=lambda w: PLAN.resources(w.xh)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/extract.py"


# corpus.shards=N: N jobs, each forwarding whole batches of the corpus's windows into a store of
# its own (and its reducers' partial states); rule gather then makes one store of them. A shard
# that finished is kept when another fails; a rerun makes only the missing ones.
rule extract_shard:
    """Forward the model over one shard of a corpus's windows (laminae.shards)."""
    input:
        unpack(lambda w: PLAN.source_inputs(w.xh)),
    output:
        directory(f"{EXTRACTION}/shards/{{shard}}"),
    log:
        f"{EXTRACTION}/shards/{{shard}}.log",
    params:
        stage=lambda w: PLAN.stage_record(w.xh),
        weights=lambda w: PLAN.weights(w.xh),   # changed weights rerun the extraction
    threads: EXTRACT_THREADS
    resources:
        gpu=lambda w: PLAN.wants_gpu(w.xh),
        mem_mb=lambda w: PLAN.shard_resources(w.xh)["mem_mb"],
        runtime=lambda w: PLAN.shard_resources(w.xh)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/extract_shard.py"


rule gather:
    """One store from a sharded extraction's shards: no model (laminae.stages.gather)."""
    input:
        shards=lambda w: PLAN.shard_dirs(w.xh),
    output:
        directory(f"{EXTRACTION}/activations"),
    log:
        f"{EXTRACTION}/extract.log",
    params:
        stage=lambda w: PLAN.stage_record(w.xh),
        weights=lambda w: PLAN.weights(w.xh),   # changed weights rerun the extraction
    wildcard_constraints:
        xh=PLAN.extraction_hashes(gathered=True),
    threads: 1
    resources:
        mem_mb=lambda w: PLAN.gather_resources(w.xh)["mem_mb"],
        runtime=lambda w: PLAN.gather_resources(w.xh)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/gather.py"


# The store's fidelity checks drawn for the report (laminae.plots.fidelity); its own small job, so
# that the extraction pays for the checks only.
rule fidelity_figure:
    """fidelity.tsv of a store -> fidelity.png and .pdf beside the store (laminae.stages.fidelity)."""
    input:
        activations=f"{EXTRACTION}/activations",
    output:
        png=report(f"{EXTRACTION}/fidelity.png", caption="../report/fidelity.rst", category="Fidelity",
                   subcategory="{model}", labels={"model": "{model}", "inputs": "{label}", "figure": "fidelity",
                                                  "run": "{xh}"}),
        pdf=f"{EXTRACTION}/fidelity.pdf",
    log:
        f"{EXTRACTION}/fidelity.log",
    params:
        stage=lambda w: PLAN.stage_record(w.xh),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/fidelity_figure.py"
