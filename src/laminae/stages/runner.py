"""Glue between a Snakemake rule and a library function: logging to the rule's `log:` file,
progress bars, and one-line errors for user mistakes.

A workflow script is three lines:

    from laminae.stages.runner import run_stage
    from laminae.stages.extract import extract
    run_stage(snakemake, lambda smk, ctx: extract(ctx.stage, ctx.runtime, Path(smk.output[0]), ctx.root,
                                                  ctx.registry()))

`ctx.stage` is the stage's typed record (laminae.stages.records: `ExtractionRecord`,
`AnalysisRecord`, ... by the stage's kind), parsed here once from `params.stage`; `ctx.runtime`
the extraction's `Runtime` (None for stages that have none).

Messages from `LaminaeError` go to the log and, as `laminae: <message>`, to stderr, and the job
exits 1 without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from laminae.errors import LaminaeError
from laminae.experiment import Experiment
from laminae.progress import set_progress_stream
from laminae.stages.records import Runtime, StageRecord, record_of

# set by the Snakefile: {"root": str, "runtime": {stage hash: {...}}, "weights": {stage hash: fingerprint},
# "experiment_packages": [...]}
WORKFLOW_CONFIG_KEY = "_laminae"


@dataclass(frozen=True)
class StageContext:
    stage: StageRecord         # the stage's typed record, from the Snakefile's params.stage
    runtime: Runtime | None    # unhashed settings of an extraction: device, batch_size, models_dir, ...
    context: dict[str, Any]    # labels for figures and reports (model, template, ...)
    root: Path                 # the project root
    experiment_packages: tuple[str, ...] = ()

    def registry(self) -> dict[str, Experiment]:
        """Every experiment the workflow knows, by name (the job's view of `laminae.registry`)."""
        from laminae.registry import discover

        return discover(self.experiment_packages, self.root)

    def experiment(self, name: str) -> Experiment:
        return self.registry()[name]


def configure_logging(log_path: str | os.PathLike | None) -> None:
    handlers: list[logging.Handler] = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
        if not sys.stderr.isatty():
            set_progress_stream(handlers[0].stream)
    handlers.append(logging.StreamHandler(sys.stderr))
    handlers[-1].setLevel(logging.WARNING)
    # a user error reaches stderr once, as `laminae: <message>` (run_stage prints it)
    handlers[-1].addFilter(lambda record: not getattr(record, "user_error", False))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for noisy in ("transformers", "huggingface_hub", "matplotlib", "h5py", "fontTools", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:  # transformers' own "Loading weights" bars would clutter every rule log
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def run_stage(smk: Any, main: Callable[[Any, StageContext], None]) -> None:
    """Run `main(snakemake, context)` with logging set up; exit 1 with one line on user errors."""
    configure_logging(smk.log[0] if len(smk.log) else None)
    params = smk.params
    # Runtime settings and the project root travel in the workflow config, not in params, so
    # that changing them (or moving the project) does not trigger Snakemake's params rerun.
    injected = smk.config.get(WORKFLOW_CONFIG_KEY, {})
    runtime = injected.get("runtime", {}).get(params.stage["hash"])
    context = StageContext(
        stage=record_of(params.stage, weights=injected.get("weights", {}).get(params.stage["hash"])),
        runtime=None if runtime is None else Runtime.parse(runtime),
        context=dict(params.context) if hasattr(params, "context") else {},
        root=Path(injected.get("root", Path.cwd())),
        experiment_packages=tuple(injected.get("experiment_packages", ())),
    )
    log = logging.getLogger("laminae")
    log.info("stage %s (hash %s), rule %s", context.stage.name, context.stage.hash, smk.rule)
    try:
        main(smk, context)
    except LaminaeError as error:
        log.error("%s", error, extra={"user_error": True})
        print(f"laminae: {error}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        log.exception("unexpected error in stage %s", context.stage.name)
        raise
