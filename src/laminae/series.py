"""What an experiment measures, in a form any feature can read without knowing the experiment:
per-layer series with their uncertainty, and samples of per-token values.

An experiment's `measure` hook (laminae.experiment) reads its own metrics files back into these:

    >>> rsa = Series(values, low=ci_low, high=ci_high, interval="95% bootstrap CI (words resampled)")
    >>> rsa.n_layers, rsa.has_interval
    (36, True)
    >>> cosines = Sample(values, layer=layer_of_each, cluster=token_of_each, what="cos(attn_out, mlp_out)")
    >>> cosines.in_layers([0, 1, 2]).values.size

Claims (laminae.claims) are judged on them, and a sweep's heatmaps across checkpoints or model
sizes can read the same "headline metrics" of any experiment.

- `Series`: one value per layer (NaN: not measured at that layer), and optionally an interval
  `low`/`high` (a bootstrap CI, mean +- 1.96 SEM, a permutation band: `interval` says which, in
  words) and per-layer `p_value`/`q_value`. Without an interval, a predicate uses the values.
- `Sample`: values pooled over tokens and layers (experiment 2's histogram), each with its
  layer (so a claim can ask a depth band), its resampling unit `cluster` (e.g. the token: its
  values at every layer are resampled together, because they are not independent), and
  optionally a boolean `group` (e.g. the pairs that start at a window's first token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Series:
    """Per-layer values, each field (n_layers,) float64; see the module docstring."""

    values: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    interval: str = ""              # what low/high are, e.g. "95% bootstrap CI"; "" when none
    p_value: np.ndarray | None = None
    q_value: np.ndarray | None = None
    label: str = ""                 # how figures and reports name it, e.g. "RSA Q-K"

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"Series values must be (n_layers,); got shape {values.shape}")
        object.__setattr__(self, "values", values)
        if (self.low is None) != (self.high is None):
            raise ValueError("Series: give both low and high, or neither")
        for name in ("low", "high", "p_value", "q_value"):
            array = getattr(self, name)
            if array is not None:
                array = np.asarray(array, dtype=np.float64)
                if array.shape != values.shape:
                    raise ValueError(f"Series {name} must be {values.shape} like its values; got {array.shape}")
                object.__setattr__(self, name, array)
        if self.low is not None and not self.interval:
            raise ValueError("Series: say what the interval is (interval='95% bootstrap CI', ...)")

    @property
    def n_layers(self) -> int:
        return int(self.values.size)

    @property
    def has_interval(self) -> bool:
        """True when some layer has a finite interval."""
        return self.low is not None and bool(np.isfinite(self.low).any() and np.isfinite(self.high).any())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) per layer: the interval where finite, else the value itself (a layer
        without an interval is judged on its point value)."""
        if self.low is None:
            return self.values, self.values
        finite = np.isfinite(self.low) & np.isfinite(self.high)
        return np.where(finite, self.low, self.values), np.where(finite, self.high, self.values)


@dataclass(frozen=True)
class Sample:
    """Values pooled over tokens (or pairs) and layers; each field (n_values,)."""

    values: np.ndarray              # float64, finite
    layer: np.ndarray               # int: the layer of each value
    cluster: np.ndarray             # int: the resampling unit of each value (e.g. the token)
    group: np.ndarray | None = None   # bool: membership of a named group (e.g. first-token pairs)
    group_label: str = ""           # what the group is, e.g. "pairs starting at a window's first token"
    what: str = ""                  # what the values are, e.g. "cos(attn_out, mlp_out) per token and layer"
    n_layers: int = field(default=0)   # the model's depth (layers may be absent from the sample)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"Sample values must be 1-D; got shape {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("Sample values must be finite (leave undefined values out)")
        object.__setattr__(self, "values", values)
        for name in ("layer", "cluster"):
            array = np.asarray(getattr(self, name), dtype=np.int64)
            if array.shape != values.shape:
                raise ValueError(f"Sample {name} must be {values.shape} like its values; got {array.shape}")
            object.__setattr__(self, name, array)
        if self.group is not None:
            group = np.asarray(self.group, dtype=bool)
            if group.shape != values.shape:
                raise ValueError(f"Sample group must be {values.shape} like its values; got {group.shape}")
            if not self.group_label:
                raise ValueError("Sample: say what the group is (group_label=...)")
            object.__setattr__(self, "group", group)
        if self.n_layers < 1:
            object.__setattr__(self, "n_layers", int(self.layer.max()) + 1 if values.size else 0)

    def in_layers(self, layers) -> "Sample":
        """The values of the given layers only."""
        keep = np.isin(self.layer, np.asarray(list(layers), dtype=np.int64))
        return Sample(self.values[keep], self.layer[keep], self.cluster[keep],
                      None if self.group is None else self.group[keep], self.group_label, self.what, self.n_layers)


Measurement = Series | Sample


def check_measurements(measurements: object, declared: dict[str, str], experiment: str) -> dict[str, Measurement]:
    """The `measure` hook's result, checked: a mapping of declared names to a Series (kind
    "layers") or a Sample (kind "sample"), every Series of the same length. Raises RuntimeError
    naming the experiment (a broken hook is a bug in the experiment, not a user error)."""
    if not isinstance(measurements, dict):
        raise RuntimeError(f"experiment {experiment!r}: measure must return a dict of Series/Sample; "
                           f"got {type(measurements).__name__}")
    lengths = set()
    for name, value in measurements.items():
        if name not in declared:
            raise RuntimeError(f"experiment {experiment!r}: measure returned {name!r}, which its measures do not "
                               f"declare ({', '.join(declared)})")
        expected = Series if declared[name] == "layers" else Sample
        if not isinstance(value, expected):
            raise RuntimeError(f"experiment {experiment!r}: measure {name!r} must be a {expected.__name__}; "
                               f"got {type(value).__name__}")
        if isinstance(value, Series):
            lengths.add(value.n_layers)
    if len(lengths) > 1:
        raise RuntimeError(f"experiment {experiment!r}: its series disagree on the number of layers ({sorted(lengths)})")
    return dict(measurements)
