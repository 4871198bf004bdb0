"""Depth bands: consecutive groups of layers by relative depth, so any model splits alike.

With L layers and B bands, layer l (0-based) belongs to band b = floor(B * l / L), i.e. band b
holds the layers whose relative depth l / L lies in [b / B, (b + 1) / B). Bands are consecutive,
cover every layer once, and differ in size by at most one layer (B <= L):

    >>> depth_bands(6, 3)         # MiniLM: layers 0-1, 2-3, 4-5
    [range(0, 2), range(2, 4), range(4, 6)]
    >>> depth_bands(36, 3)        # GPT-2 Large: 0-11, 12-23, 24-35
    [range(0, 12), range(12, 24), range(24, 36)]
    >>> band_name(1, 3)
    'middle third'

`rotations.plot.depth_bands` asks for at most that many bands: a model with fewer layers gets
one band per layer (`band_count`), so the default (3) works at every depth, 1 layer up, and a
deeper model's bands are what they always were:

    >>> band_count(2, 3), band_count(36, 3)
    (2, 3)
"""

from __future__ import annotations

from laminae.errors import ConfigError

NAMES = {1: ("all layers",), 2: ("first half", "second half"), 3: ("first third", "middle third", "last third"),
         4: ("first quarter", "second quarter", "third quarter", "last quarter")}


def depth_bands(n_layers: int, n_bands: int, key: str = "rotations.plot.depth_bands") -> list[range]:
    """The layers of each band (see module docstring); ConfigError naming `key` unless
    1 <= n_bands <= n_layers."""
    if not isinstance(n_bands, int) or isinstance(n_bands, bool) or not 1 <= n_bands <= max(n_layers, 1):
        raise ConfigError(key, f"an integer from 1 to the number of layers ({n_layers})", n_bands)
    starts = [-(-b * n_layers // n_bands) for b in range(n_bands + 1)]   # ceil(b L / B): first l with B l / L >= b
    return [range(starts[b], starts[b + 1]) for b in range(n_bands)]


def band_count(n_layers: int, requested: int, key: str = "rotations.plot.depth_bands") -> int:
    """The bands a model of `n_layers` layers is drawn in: `requested`, at most one per layer;
    ConfigError naming `key` unless `requested` is an integer >= 1."""
    if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
        raise ConfigError(key, "an integer >= 1 (at most one band per layer is drawn)", requested)
    return min(requested, max(int(n_layers), 1))


def band_name(index: int, n_bands: int) -> str:
    """'first third', 'middle third', ... or 'band 2 of 5'."""
    names = NAMES.get(n_bands)
    return names[index] if names else f"band {index + 1} of {n_bands}"
