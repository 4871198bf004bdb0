"""Checking an experiment's claims (`<name>.claims`) before anything runs: one-line
`ConfigError`s naming the key, like every other config key.

    >>> check_claims(cfg, registry["qkv"])
    ConfigError: config key 'qkv.claims.2.depth': expected [low, high] with low <= high, got [0.8, 0.2]
    ConfigError: config key 'qkv.claims.0.series.1': expected one of qkv's layer measurements (rsa:q-k, ...), got 'rsa:q-x'

The core schema only says `claims` is a list of mappings with a known `kind`; each claim is then
checked against its kind's own schema (`laminae.claims.kinds`), and against the experiment's
declared measures. No NumPy: this runs while Snakemake builds its DAG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from laminae.claims.kinds import KINDS, depth_layers, named, seed_layer_range
from laminae.config.schema_check import check_against_schema
from laminae.errors import ConfigError
from laminae.experiment import Experiment

#: What the core schema says about every config group's `claims` (the details are per kind).
CLAIMS_SCHEMA = {"type": "array",
                 "description": "the findings judged on every run, each a mapping with an id and a kind "
                                "(docs/EXPERIMENTS.md, \"Claims\"); editing them reruns only the claims stage "
                                "and the figures",
                 "items": {"type": "object", "required": ["id", "kind"],
                           "properties": {"kind": {"enum": list(KINDS),
                                                   "description": "the predicate that judges the claim"}}}}


def claims_of(cfg: Mapping[str, Any], experiment: Experiment) -> list[dict[str, Any]]:
    """The experiment's claims as configured (an empty list when its group has none)."""
    return list(cfg.get(experiment.name, {}).get("claims") or [])


def check_claims(cfg: Mapping[str, Any], experiment: Experiment) -> None:
    """Raise ConfigError for the first problem in the experiment's claims."""
    claims = claims_of(cfg, experiment)
    if not claims:
        return
    prefix = f"{experiment.name}.claims"
    measures = {measure.name: measure.kind for measure in experiment.measures}
    if experiment.measure is None or not measures:
        raise ConfigError(prefix, f"no claims ([]): experiment {experiment.name!r} declares no measures to judge "
                                  "them on", has_value=False)
    seen: dict[str, int] = {}
    for index, claim in enumerate(claims):
        key = f"{prefix}.{index}"
        check_against_schema(claim, KINDS[claim["kind"]].schema(), prefix=key)
        if claim["id"] in seen:
            raise ConfigError(f"{key}.id", f"an id no other claim of {experiment.name} has (claim {seen[claim['id']]} "
                                           "has it)", claim["id"])
        seen[claim["id"]] = index
        for path, name, kind in named(claim):
            if measures.get(name) != kind:
                choices = [m for m, k in measures.items() if k == kind]
                what = "layer measurements (series)" if kind == "layers" else "samples"
                raise ConfigError(f"{key}.{path}", f"one of {experiment.name}'s {what} "
                                                   f"({', '.join(choices) or 'none declared'})", name)
        _check_values(claim, key)


def _check_values(claim: Mapping[str, Any], key: str) -> None:
    """What a schema cannot say: ordered bounds, opposite signs, the seed's layers in the depth."""
    depth = claim.get("depth")
    if depth is not None and depth[0] > depth[1]:
        raise ConfigError(f"{key}.depth", "[low, high] with low <= high (relative depth: layer / (n_layers - 1))",
                          depth)
    if claim["kind"] == "within":
        low, high = claim["range"]
        if low is None and high is None:
            raise ConfigError(f"{key}.range", "[low, high] with at least one bound (null: open)", claim["range"])
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{key}.range", "[low, high] with low <= high", claim["range"])
    if claim["kind"] == "sign_flip":
        first, second = claim["values"]
        if first == 0 or second == 0 or (first > 0) == (second > 0):
            raise ConfigError(f"{key}.values", "two reported values of opposite signs, neither 0 (e.g. [0.6, -0.2])",
                              claim["values"])
        if claim["from"] == claim["to"]:
            raise ConfigError(f"{key}.to", "a series other than 'from'", claim["to"])
    if "seed_layers" in claim:
        first, last, total = seed_layer_range(claim["seed_layers"])
        if not first <= last < total:
            raise ConfigError(f"{key}.seed_layers", "'first-last of n_layers' with first <= last < n_layers",
                              claim["seed_layers"])
        chosen = depth_layers(claim.get("depth", [0.0, 1.0]), total)
        if chosen != list(range(first, last + 1)):
            scale = max(total - 1, 1)
            raise ConfigError(f"{key}.depth", f"the relative depth of seed_layers '{claim['seed_layers']}' "
                                              f"([{first / scale:.3f}, {last / scale:.3f}] selects exactly those "
                                              f"layers of {total})", claim.get("depth", [0.0, 1.0]))
