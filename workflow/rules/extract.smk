# Extraction: model + inputs -> activations/ (layer_NN.h5 of the sites the experiments reading
# these inputs need, rows.tsv, reductions/ of those that run during extraction). One job per
# model and set of inputs, shared by every experiment on them.
EXTRACTION = f"{RESULTS}/{{model}}/{{inputs}}/{{label}}-{{xh}}"

# Building a random model takes seconds: on a cluster it runs in the submitting process rather
# than waiting in the queue as a job of its own.
localrules:
    random_model,


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
    """Forward the model over the inputs; hook and store every layer's sites."""
    input:
        unpack(lambda w: PLAN.extract_inputs(w.xh)),
    output:
        directory(f"{EXTRACTION}/activations"),
    log:
        f"{EXTRACTION}/extract.log",
    params:
        stage=lambda w: PLAN.stage_record(w.xh),
    threads: 4
    resources:
        gpu=lambda w: PLAN.wants_gpu(w.xh),
        mem_mb=lambda w: PLAN.resources(w.xh)["mem_mb"],
        runtime=lambda w: PLAN.resources(w.xh)["runtime"],
    conda:
        "../../envs/laminae.yaml"
    script:
        "../scripts/extract.py"
