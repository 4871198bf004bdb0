"""The predicate kinds a claim can use: their parameters (JSON schema and defaults), the
measurements they name, how they read in words, and the reference marks they put on figures.

No NumPy here: the workflow checks claims while Snakemake builds its DAG. The rules themselves
are in `laminae.claims.predicates` (docs/EXPERIMENTS.md, "Claims", states each precisely).

A claim in an experiment's config group (`<name>.claims`), e.g. seed 003's middle layers:

    - id: middle_near_zero
      seed: "003"
      says: the attention-MLP cosine is near 0 in the middle layers
      seed_layers: 6-29 of 36          # the seed's own layer numbers (optional, checked against depth)
      reference: course, GPT-2 Large   # draw the reported value on the figures, with this label (optional)
      kind: near
      series: [cosine]
      depth: [0.171, 0.829]            # relative depth: layer / (n_layers - 1)
      value: 0.0
      tolerance: 0.05
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ID_PATTERN = "^[a-z][a-z0-9_]*$"
SEED_LAYERS_PATTERN = r"^[0-9]+-[0-9]+ of [0-9]+$"

_DEPTH = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number", "minimum": 0, "maximum": 1}}
_NAMES = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string", "minLength": 1}}
_NAME = {"type": "string", "minLength": 1}
_FRACTION = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_ALPHA = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_NONNEG = {"type": "number", "minimum": 0}
_BOOTSTRAP = {"type": "integer", "minimum": 0}
_SEED = {"type": "integer", "minimum": 0}

#: Keys every claim has, whatever its kind.
COMMON = {
    "id": {"type": "string", "pattern": ID_PATTERN, "description": "lower case letters, digits and _ (it names a column)"},
    "seed": {"type": "string", "minLength": 1},
    "says": {"type": "string", "minLength": 1},
    "seed_layers": {"type": "string", "pattern": SEED_LAYERS_PATTERN,
                    "description": "the seed's layers as 'first-last of n_layers', e.g. '6-29 of 36'"},
    "reference": {"type": "string", "minLength": 1},
    "kind": {"type": "string"},
}
COMMON_REQUIRED = ("id", "seed", "says", "kind")


@dataclass(frozen=True)
class Kind:
    """One predicate kind: its own keys (schema, required, defaults) and which of them name
    measurements, of kind "layers" (`series_keys`) or "sample" (`sample_keys`)."""

    name: str
    summary: str
    params: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    series_keys: tuple[str, ...] = ()
    sample_keys: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        """The JSON schema of a claim of this kind (common keys and its own; nothing else)."""
        return {"type": "object", "additionalProperties": False, "required": [*COMMON_REQUIRED, *self.required],
                "properties": {**COMMON, "kind": {"const": self.name}, **self.params}}


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("within", "every layer of a depth band inside a range",
         {"series": _NAMES, "depth": _DEPTH,
          "range": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": ["number", "null"]}},
          "tolerance": _NONNEG, "min_fraction": _FRACTION},
         required=("series", "range"), defaults={"depth": [0.0, 1.0], "tolerance": 0.0, "min_fraction": 1.0},
         series_keys=("series",)),
    Kind("near", "every layer of a depth band near a value",
         {"series": _NAMES, "depth": _DEPTH, "value": {"type": "number"}, "tolerance": {"type": "number",
                                                                                      "exclusiveMinimum": 0},
          "min_fraction": _FRACTION},
         required=("series", "value", "tolerance"), defaults={"depth": [0.0, 1.0], "min_fraction": 1.0},
         series_keys=("series",)),
    Kind("trend", "increasing or decreasing with depth across a band (Kendall's tau)",
         {"series": _NAMES, "depth": _DEPTH, "direction": {"enum": ["increasing", "decreasing"]}, "alpha": _ALPHA},
         required=("series", "direction"), defaults={"depth": [0.0, 1.0], "alpha": 0.05}, series_keys=("series",)),
    Kind("greater", "one series above others at a fraction of a band's layers",
         {"series": _NAME, "than": _NAMES, "depth": _DEPTH, "margin": _NONNEG, "min_fraction": _FRACTION,
          "alpha": {"anyOf": [_ALPHA, {"type": "null"}]}},
         required=("series", "than"),
         defaults={"depth": [0.0, 1.0], "margin": 0.0, "min_fraction": 1.0, "alpha": None},
         series_keys=("series", "than")),
    Kind("sign_flip", "one series on one side of 0 and another on the other side, at some layer",
         {"from": _NAME, "to": _NAME, "values": {"type": "array", "minItems": 2, "maxItems": 2,
                                                  "items": {"type": "number"}},
          "depth": _DEPTH, "min_layers": {"type": "integer", "minimum": 1}},
         required=("from", "to", "values"), defaults={"depth": [0.0, 1.0], "min_layers": 1},
         series_keys=("from", "to")),
    Kind("centred_right_tail", "a distribution peaking near a value, with a right tail",
         {"sample": _NAME, "depth": _DEPTH, "centre": {"type": "number"}, "tolerance": {"type": "number",
                                                                                       "exclusiveMinimum": 0},
          "quantile": {"type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 1},
          "n_bootstrap": _BOOTSTRAP, "confidence": _ALPHA, "bootstrap_seed": _SEED},
         required=("sample", "tolerance"),
         defaults={"depth": [0.0, 1.0], "centre": 0.0, "quantile": 0.9, "n_bootstrap": 1000, "confidence": 0.95,
                   "bootstrap_seed": 0},
         sample_keys=("sample",)),
    Kind("bimodal_from_group", "a distribution with two modes with a group, fewer without it",
         {"sample": _NAME, "depth": _DEPTH, "min_height": _FRACTION, "min_dip": _FRACTION,
          "n_bootstrap": _BOOTSTRAP, "support": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 1},
          "bootstrap_seed": _SEED},
         required=("sample",),
         defaults={"depth": [0.0, 1.0], "min_height": 0.1, "min_dip": 0.1, "n_bootstrap": 200, "support": 0.9,
                   "bootstrap_seed": 0},
         sample_keys=("sample",)),
)}


def normalised(claim: Mapping[str, Any]) -> dict[str, Any]:
    """The claim with its kind's defaults filled in."""
    return {**KINDS[claim["kind"]].defaults, **claim}


def named(claim: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key path below the claim, measurement name, measure kind) for every measurement the
    claim names, e.g. ("series.1", "rsa:q-v", "layers")."""
    kind = KINDS[claim["kind"]]
    out = []
    for keys, measure_kind in ((kind.series_keys, "layers"), (kind.sample_keys, "sample")):
        for key in keys:
            value = claim.get(key)
            if isinstance(value, str):
                out.append((key, value, measure_kind))
            elif isinstance(value, list):
                out.extend((f"{key}.{i}", item, measure_kind) for i, item in enumerate(value))
    return out


def seed_layer_range(text: str) -> tuple[int, int, int]:
    """'6-29 of 36' -> (6, 29, 36)."""
    span, _, total = text.partition(" of ")
    first, _, last = span.partition("-")
    return int(first), int(last), int(total)


def depth_layers(depth: Sequence[float], n_layers: int) -> list[int]:
    """The layers l whose relative depth l / (n_layers - 1) lies in [depth[0], depth[1]]
    (a one-layer model's only layer has depth 0). Bounds are inclusive, to 1e-9."""
    low, high = float(depth[0]), float(depth[1])
    scale = max(n_layers - 1, 1)
    return [layer for layer in range(n_layers) if low - 1e-9 <= layer / scale <= high + 1e-9]


def layers_text(layers: Sequence[int], n_layers: int) -> str:
    """'6-29 of 36', '0, 2 of 6', 'none of 6'."""
    if not layers:
        return f"none of {n_layers}"
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) + f" of {n_layers}"


def _depth_text(depth: Sequence[float]) -> str:
    return f"depth {float(depth[0]):g}-{float(depth[1]):g}"


def _names(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def _fraction(value: float) -> str:
    return "every layer" if value >= 1 else f">= {100 * value:g}% of layers"


def expected_text(claim: Mapping[str, Any]) -> str:
    """What the claim asks, with its thresholds, in one line (the `expected` column)."""
    c = normalised(claim)
    kind, depth = c["kind"], _depth_text(c.get("depth", [0, 1]))
    if kind == "within":
        low, high = c["range"]
        tol = c["tolerance"]
        lo = "-inf" if low is None else f"{low - tol:g}"
        hi = "+inf" if high is None else f"{high + tol:g}"
        stated = f"{'-inf' if low is None else f'{low:g}'} to {'+inf' if high is None else f'{high:g}'}"
        return (f"{_names(c['series'])}: at {_fraction(c['min_fraction'])} of {depth}, the whole interval inside "
                f"[{lo}, {hi}] ({stated} +- {tol:g})")
    if kind == "near":
        v, tol = c["value"], c["tolerance"]
        return (f"{_names(c['series'])}: at {_fraction(c['min_fraction'])} of {depth}, the whole interval inside "
                f"[{v - tol:g}, {v + tol:g}] ({v:g} +- {tol:g})")
    if kind == "trend":
        sign = "<" if c["direction"] == "decreasing" else ">"
        return (f"{_names(c['series'])}: {c['direction']} over {depth}: Kendall tau(layer, value) {sign} 0, "
                f"one-sided p <= {c['alpha']:g}")
    if kind == "greater":
        margin = f" + {c['margin']:g}" if c["margin"] else ""
        significant = f", and {c['series']} itself significant (q < {c['alpha']:g})" if c["alpha"] else ""
        return (f"{c['series']} > {_names(c['than'])}{margin} at {_fraction(c['min_fraction'])} of {depth}: "
                f"intervals (or values) separated{significant}")
    if kind == "sign_flip":
        a, b = c["values"]
        side = {True: "> 0", False: "< 0"}
        return (f"at >= {c['min_layers']} layer(s) at {depth}: {c['from']} {side[a > 0]} and {c['to']} {side[b > 0]}, "
                f"both intervals excluding 0 (reported: {a:g} -> {b:g})")
    if kind == "centred_right_tail":
        return (f"{c['sample']} at {depth}: peak (KDE mode) inside [{c['centre'] - c['tolerance']:g}, "
                f"{c['centre'] + c['tolerance']:g}] and Kelly skewness (q{c['quantile']:g}) > 0, "
                f"{100 * c['confidence']:g}% bootstrap CIs")
    if kind == "bimodal_from_group":
        return (f"{c['sample']} at {depth}: >= 2 modes (height >= {c['min_height']:g} of the highest, dip >= "
                f"{c['min_dip']:g}) with the group and fewer without, in >= {100 * c['support']:g}% of "
                f"{c['n_bootstrap']} bootstrap replicates")
    raise KeyError(kind)


def references(claims: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The marks figures draw for the claims that carry a `reference` label: a band (`low` <
    `high`) or a line (`low` == `high`) over the claim's depth band, on each series it names.

        {"claim": "rsa_high", "series": "rsa:q-k", "depth": [0, 1], "low": 0.84, "high": 0.96,
         "label": "course, GPT-2 Large"}

    `within` draws its stated range (open ends as None), `near` its value +- tolerance,
    `sign_flip` its two reported values on their series; other kinds draw nothing."""
    out = []
    for claim in claims:
        if "reference" not in claim:
            continue
        c = normalised(claim)
        base = {"claim": c["id"], "depth": list(c["depth"]), "label": c["reference"]}
        if c["kind"] == "within":
            out += [{**base, "series": s, "low": c["range"][0], "high": c["range"][1]} for s in c["series"]]
        elif c["kind"] == "near":
            out += [{**base, "series": s, "low": c["value"] - c["tolerance"], "high": c["value"] + c["tolerance"]}
                    for s in c["series"]]
        elif c["kind"] == "sign_flip":
            out += [{**base, "series": c[key], "low": value, "high": value}
                    for key, value in zip(("from", "to"), c["values"])]
    return out
