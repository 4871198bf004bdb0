"""The `qkv.analysis` stage: activation store -> `metrics/` (rule `qkv_metrics`).

    >>> run_qkv_metrics(stage, Path(".../activations"), Path(".../metrics"))
    # -> metrics/qkv_laminar.tsv, metrics/similarity.h5 (with provenance attrs), metrics/config.yaml

`stage` is the stage record the Snakefile passes (`{"stage", "hash", "config"}`); its
`config["qkv"]` holds the analysis settings and `config["upstream"]` the extraction's hash,
which the store must carry (a store from another config is refused with one line).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laminae.analysis.qkv import analyse_qkv, write_qkv_tables
from laminae.errors import InputFileError
from laminae.provenance import atomic_write_text, provenance_attrs, stage_config_record
from laminae.store import ROWS_FILE, ActivationStore

log = logging.getLogger(__name__)
CONFIG_FILENAME = "config.yaml"
# Store attributes copied onto similarity.h5 (prefixed `activations_`), so the metrics say
# which model and extraction they come from without opening the store.
_STORE_ATTRS = ("model_id", "model_revision", "family", "random_weights", "n_layers", "d_model", "storage_dtype")


def category_labels(categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Category names in order of first appearance, and each row's integer code into them.

        >>> category_labels(["fruit", "fruit", "space", "fruit"])
        (['fruit', 'space'], array([0, 0, 1, 0]))
    """
    order: dict[str, int] = {}
    codes = [order.setdefault(name, len(order)) for name in categories]
    return list(order), np.asarray(codes, dtype=np.int64)


def run_qkv_metrics(stage: dict[str, Any], activations_dir: str | Path, metrics_dir: str | Path,
                    runtime: dict[str, Any] | None = None) -> list[Path]:
    """Read Q, K, V (the components in `stage["config"]["qkv"]["components"]`) from the store,
    analyse them with the stage's settings, and write the tables and `config.yaml` into
    `metrics_dir`. Returns the written paths (table, similarity, config)."""
    settings = stage["config"]["qkv"]
    store = ActivationStore(activations_dir, expected_hash=stage["config"]["upstream"])
    for column in ("word", "category"):
        if column not in (store.rows[0] if store.rows else {}):
            raise InputFileError(store.dir / ROWS_FILE, f"has no {column!r} column; the qkv analysis needs a "
                                                        "stimuli extraction (word, category per row)")
    categories, labels = category_labels(store.column("category"))
    activations = {component: store.read(component) for component in settings["components"]}
    log.info("analysing %s over %d layers, %d words in %d categories (%s), %d permutations, %d bootstraps",
             "/".join(activations), store.n_layers, store.n_rows, len(categories), ", ".join(categories),
             settings["n_permutations"], settings["n_bootstrap"])
    results = analyse_qkv(
        activations, labels, categories,
        selectivity=settings["selectivity"], rsa_method=settings["rsa_method"],
        n_permutations=settings["n_permutations"], n_bootstrap=settings["n_bootstrap"],
        confidence=settings["confidence"], zscore=settings["zscore"], seed=settings["seed"],
        words=store.column("word"),
    )
    attrs = provenance_attrs(stage, runtime)
    attrs.update({f"activations_{key}": store.attrs[key] for key in _STORE_ATTRS if key in store.attrs})
    attrs["activations_stage_hash"] = store.attrs["stage_hash"]
    metrics_dir = Path(metrics_dir)
    table, similarity = write_qkv_tables(results, metrics_dir, attrs=attrs)
    config = metrics_dir / CONFIG_FILENAME
    atomic_write_text(config, stage_config_record(stage, runtime))
    log.info("wrote %s, %s, %s", table, similarity, config)
    return [table, similarity, config]
