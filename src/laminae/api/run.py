"""One run's files, opened: its config, activations, rows, metrics, claims and figures.

    >>> run = laminae.load("af339e", results="results")    # or Run("results/.../qkv/analysis-af339ec74c")
    >>> run.experiment, run.model, run.n_layers
    ('qkv', 'tiny-gpt2', 4)
    >>> q = run.activations("q")                           # lazy: nothing read yet
    >>> q.shape                                            # (n_layers, n_rows, width)
    (4, 34, 64)
    >>> q[2].shape                                         # layer 2 read: (n_rows, width)
    (34, 64)
    >>> run.activations("q", layers=[0, -1])[:, :5].shape  # first and last layer, first 5 rows
    (2, 5, 64)
    >>> np.asarray(q)                                      # every layer, in the stored dtype
    >>> run.rows                                           # rows.tsv: a DataFrame, one row per stored row
    >>> run.metrics()                                      # ['qkv_laminar.tsv', 'similarity.h5']
    >>> run.metrics("qkv_laminar")                         # the TSV as a DataFrame
    >>> run.claims()                                       # claims.tsv: one row per claim, its verdict
    >>> run.headline()                                     # the measure hook's series: layer x measure
    >>> run.figures()                                      # [Path(".../qkv_laminar.png"), ...]

`config` is the run's resolved config, every stage's hashed keys merged (the model, the inputs,
the experiment's settings, its plot and claims keys); `records` the stages' whole `config.yaml`
(runtime settings and package versions included).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laminae.api.results import BOOKKEEPING, CONFIG_FILE, RunNotFoundError, find_runs, newest_complete
from laminae.errors import InputFileError, LaminaeError
from laminae.provenance import read_stage_record

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from laminae.store import ActivationStore

#: rows.tsv columns that hold integers (the rest stay text: a token may be "1").
INTEGER_COLUMNS = ("row", "position", "n_tokens", "token_id", "window")


class Activations:
    """One site of a store as a read-only, lazy array of shape `(n_layers, n_rows, width)`
    (the layers asked for, in that order): indexing reads only the layer files it needs.

        >>> q = run.activations("q")
        >>> q.shape, q.dtype, q.layers
        ((4, 34, 64), dtype('float32'), (0, 1, 2, 3))
        >>> q[-1]              # (n_rows, width): the last layer
        >>> q[:, 3]            # (n_layers, width): row 3 at every layer
        >>> q.read("float64")  # everything, as an ndarray (np.asarray(q) also works)
    """

    def __init__(self, store: "ActivationStore", site: str, layers: Sequence[int] | None = None):
        import numpy as np

        store.require([site], "laminae.Run.activations")
        n = store.n_layers
        chosen = range(n) if layers is None else [layers] if isinstance(layers, (int, np.integer)) else layers
        self.layers: tuple[int, ...] = tuple(_layer_index(layer, n) for layer in chosen)
        self.site = site
        self.store = store
        import h5py

        with h5py.File(store.paths[0], "r") as handle:
            self.dtype = handle[site].dtype
        self.shape = (len(self.layers), store.n_rows, store.widths[site])

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<Activations {self.site!r} {self.shape} {self.dtype} from '{self.store.dir}'>"

    def __getitem__(self, key: Any) -> "np.ndarray":
        import numpy as np

        key = key if isinstance(key, tuple) else (key,)
        if any(part is Ellipsis for part in key):
            key = _expand_ellipsis(key)
        first, rest = key[0], key[1:]
        if len(rest) > 2:
            raise IndexError(f"too many indices for a 3-D array: {len(key)}")
        if isinstance(first, (int, np.integer)):
            return self._read_layer(self.layers[_layer_index(int(first), len(self.layers))], rest)
        picked = np.arange(len(self.layers))[first]
        return np.stack([self._read_layer(self.layers[i], rest) for i in picked]) if len(picked) else \
            np.empty((0, *self._empty_shape(rest)), dtype=self.dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> "np.ndarray":
        return self.read(dtype)

    def read(self, dtype: Any = None) -> "np.ndarray":
        """Every chosen layer: an ndarray `(n_layers, n_rows, width)`, in the stored dtype unless
        `dtype` is given."""
        import numpy as np

        dtype = self.dtype if dtype is None else dtype
        if not self.layers:
            return np.empty(self.shape, dtype=dtype)
        return self.store.read(self.site, self.layers, dtype=dtype)

    def _read_layer(self, layer: int, rest: tuple) -> "np.ndarray":
        import h5py
        import numpy as np

        with h5py.File(self.store.paths[layer], "r") as handle:
            data = handle[self.site]
            if all(isinstance(part, (slice, int, np.integer)) for part in rest):
                return data[rest] if rest else data[()]
            return data[()][rest]   # fancy indexing: read the layer, index in memory

    def _empty_shape(self, rest: tuple) -> tuple[int, ...]:
        import numpy as np

        return np.empty(self.shape[1:], dtype=np.bool_)[rest].shape


class Run:
    """One run: an analysis folder `.../<experiment>/analysis-<hash>/`, the extraction it reads
    and its figure and claims folders (the newest complete ones when several settings made
    several). See the module docstring; `laminae.load` finds one by id."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.name == "activations":
            path = path.parent
        if not path.is_dir():
            raise RunNotFoundError(f"run folder '{path}' not found")
        if path.name.startswith("analysis-"):
            self.path = path
            self.id = path.name.split("-", 1)[1]
            self.experiment = path.parent.name.split("+")[0]
            self.variants = tuple(path.parent.name.split("+")[1:])
            extraction = path.parent.parent
        elif (path / "activations").exists() or path.name.rpartition("-")[2].isalnum():
            self.path = path   # an extraction without analysis: its activations only
            self.id = path.name.rpartition("-")[2]
            self.experiment, self.variants = "", ()
            extraction = path
        else:
            raise RunNotFoundError(f"'{path}' is not a run's folder (analysis-<hash>/)")
        self.extraction_dir = extraction
        self.inputs_kind = extraction.parent.name
        self.label = extraction.name.rpartition("-")[0]
        self.model = extraction.parent.parent.name
        self.activations_dir = extraction / "activations"
        self.metrics_dir = self.path / "metrics" if self.experiment else None
        self.figures_dir = newest_complete(self.path, "plot-", "figures")[0] if self.experiment else None
        self.claims_dir = newest_complete(self.path, "claims-", "claims")[0] if self.experiment else None

    def __repr__(self) -> str:
        return f"<laminae.Run {self.id} {self.experiment or 'extraction'} on {self.model} ({self.inputs}) at '{self.path}'>"

    @property
    def inputs(self) -> str:
        return f"{self.inputs_kind}/{self.label}"

    # ----------------------------------------------------------------------- config
    @cached_property
    def records(self) -> dict[str, dict[str, Any]]:
        """Each stage's `config.yaml` ({} for a stage not written): `extract`, `analysis`,
        `plot`, `claims`."""
        folders = {"extract": self.activations_dir, "analysis": self.metrics_dir, "plot": self.figures_dir,
                   "claims": self.claims_dir}
        return {kind: read_stage_record(folder / CONFIG_FILE) if folder is not None else {}
                for kind, folder in folders.items()}

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved config: every stage's hashed keys, merged (nested as in `conf/`)."""
        merged: dict[str, Any] = {}
        for record in self.records.values():
            _merge(merged, {k: v for k, v in (record.get("config") or {}).items() if k not in BOOKKEEPING})
        return merged

    @property
    def settings(self) -> dict[str, Any]:
        """The experiment's analysis settings (its config group without `plot` and `claims`)."""
        return copy.deepcopy((self.records["analysis"].get("config") or {}).get(self.experiment, {}))

    @property
    def complete(self) -> bool:
        return all(self.records[kind] for kind in ("extract", "analysis", "plot")) if self.experiment else False

    # ----------------------------------------------------------------------- activations
    @cached_property
    def store(self) -> "ActivationStore":
        """The validated activation store (laminae.store.ActivationStore)."""
        from laminae.store import ActivationStore

        return ActivationStore(self.activations_dir)

    @property
    def sites(self) -> tuple[str, ...]:
        return self.store.sites

    @property
    def n_layers(self) -> int:
        record = self.records["extract"]
        shape = (record.get("loaded_model") or {}).get("n_layers")
        return int(shape) if shape is not None else self.store.n_layers

    def activations(self, site: str, layers: Sequence[int] | int | None = None) -> Activations:
        """The stored `site` (`q`, `k`, `v`, `attn_out`, `mlp_out`, `resid_pre`, `resid_post`: see
        docs/GUIDE.md, "The activation store") as a lazy `(n_layers, n_rows, width)` array over the layer
        files; `layers` picks some (negative from the end)."""
        return Activations(self.store, site, layers)

    @cached_property
    def rows(self) -> "pd.DataFrame":
        """rows.tsv as a DataFrame (one row per stored row; text unescaped, counts as integers)."""
        import csv

        import pandas as pd

        from laminae.store import ROWS_FILE, unescape_field

        path = self.activations_dir / ROWS_FILE
        if not path.is_file():
            raise InputFileError(path, "not found; the extraction has not finished")
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
        for column in table.columns:
            if column in INTEGER_COLUMNS:
                try:
                    table[column] = table[column].astype("int64")
                except ValueError:
                    pass
            elif table[column].str.contains("\\", regex=False).any():
                table[column] = table[column].map(unescape_field)
        return table

    # ----------------------------------------------------------------------- metrics, claims, figures
    def metrics(self, name: str | None = None) -> Any:
        """Without `name`, the metrics files' names; with it, one file: a `.tsv` as a DataFrame
        (`pandas.read_csv(path, sep="\\t")`), an `.h5` as {dataset path: ndarray}. The suffix may
        be left out (`metrics("qkv_laminar")`)."""
        folder = self._metrics_folder()
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CONFIG_FILE)
        if name is None:
            return files
        path = folder / name
        if not path.is_file():
            candidates = [f for f in files if Path(f).stem == name]
            if len(candidates) != 1:
                raise InputFileError(path, f"no such metrics file (the run has: {', '.join(files)})")
            path = folder / candidates[0]
        if path.suffix == ".tsv":
            import pandas as pd

            return pd.read_csv(path, sep="\t")
        if path.suffix in (".h5", ".hdf5"):
            return _read_hdf5(path)
        raise InputFileError(path, "is neither a .tsv table nor an .h5 file")

    def claims(self) -> "pd.DataFrame":
        """claims.tsv as a DataFrame (columns `claim, seed, says, seed_layers, layers, expected,
        measured, verdict, decided_by`, as text); empty when no claims were judged."""
        import pandas as pd

        from laminae.claims import ClaimResult
        from laminae.claims.report import read_claims_table

        if self.claims_dir is None:
            return pd.DataFrame(columns=list(ClaimResult.COLUMNS))
        results = read_claims_table(self.claims_dir / "claims.tsv")
        return pd.DataFrame([result.__dict__ for result in results], columns=list(ClaimResult.COLUMNS))

    def claims_summary(self) -> str:
        """The claims stage's one-screen summary (summary.txt), or '' without claims."""
        if self.claims_dir is None or not (self.claims_dir / "summary.txt").is_file():
            return ""
        return (self.claims_dir / "summary.txt").read_text(encoding="utf-8")

    def figures(self, ext: str | None = None) -> list[Path]:
        """The figure files (`.png` and `.pdf`; `ext="png"` for one kind), sorted."""
        if self.figures_dir is None:
            return []
        suffixes = (f".{ext.lstrip('.')}",) if ext else (".png", ".pdf")
        return sorted(p for p in self.figures_dir.iterdir() if p.suffix in suffixes)

    def measurements(self, packages: Sequence[str] = (), project: str | Path = ".") -> dict[str, Any]:
        """The experiment's measurements, as its claims are judged on them ({name: laminae.series.
        Series | Sample}), read by its `measure` hook; `packages`: where an experiment that is not
        built in lives (`experiment_packages`)."""
        from laminae.registry import discover
        from laminae.stages.claims import measurements_of

        registry = discover(packages, project)
        if self.experiment not in registry:
            raise LaminaeError(f"experiment {self.experiment!r} of run {self.id} is not built in: "
                               "pass packages=[...] (its experiment_packages)")
        experiment = registry[self.experiment]
        if experiment.measure is None:
            return {}
        return measurements_of(experiment, self._metrics_folder(), self.settings)

    def headline(self, packages: Sequence[str] = (), project: str | Path = ".") -> "pd.DataFrame":
        """The per-layer measurements as a DataFrame: index `layer`, one column per measure (its
        values; a headline measure's label in `df.attrs["labels"]`). Samples are left out."""
        import pandas as pd

        from laminae.series import Series

        series = {name: m for name, m in self.measurements(packages, project).items() if isinstance(m, Series)}
        table = pd.DataFrame({name: m.values for name, m in series.items()})
        table.index.name = "layer"
        table.attrs["labels"] = {name: m.label for name, m in series.items() if m.label}
        return table

    def _metrics_folder(self) -> Path:
        if self.metrics_dir is None or not self.metrics_dir.is_dir():
            raise InputFileError(self.metrics_dir or self.path, "no metrics: this run's analysis has not run")
        return self.metrics_dir


def load(run: Any, results: str | Path = "results") -> "Run":
    """A run by its id (a unique prefix of its analysis hash, as `results()` lists it), by the
    path of its folder (`analysis-<hash>/` or anything inside it), or by a row of `results()`.

        >>> run = load("af339e", results="results")
        >>> run = load(table.iloc[0])
        >>> run = load("results/tiny-gpt2/stimuli/.../qkv/analysis-af339ec74c")
    """
    if hasattr(run, "get") and not isinstance(run, (str, Path)) and run.get("path") is not None:
        return Run(run["path"])   # a row of the table (pandas Series or dict)
    text = str(run)
    path = Path(text)
    if path.exists() and ("/" in text or path.is_dir() and path.name.startswith(("analysis-", "activations"))):
        return Run(run_folder(path))
    matches = [found for found in find_runs(results) if found.run.startswith(text)] if text else []
    if not matches:
        raise RunNotFoundError(f"no run {text!r} in '{results}' (laminae runs --results {results} lists them)")
    if len({m.run for m in matches}) > 1:
        names = ", ".join(sorted(m.run for m in matches)[:5])
        raise RunNotFoundError(f"run id {text!r} is ambiguous in '{results}': {names}; give more of the hash")
    return Run(matches[0].path)


def run_folder(path: Path) -> Path:
    """The analysis folder a path is in (or the extraction folder of an `activations/` path)."""
    path = path.resolve()
    for candidate in (path, *path.parents):
        if candidate.name.startswith("analysis-"):
            return candidate
        if candidate.name == "activations":
            return candidate.parent
    raise RunNotFoundError(f"'{path}' is not inside a run's folder (results/<model>/<inputs>/<label>-<hash>/"
                           "<experiment>/analysis-<hash>/)")


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _layer_index(layer: int, n: int) -> int:
    if not -n <= int(layer) < n:
        raise IndexError(f"layer {layer} out of range for {n} layers")
    return int(layer) % n


def _expand_ellipsis(key: tuple) -> tuple:
    at = key.index(Ellipsis)
    fill = 3 - (len(key) - 1)
    return (*key[:at], *([slice(None)] * fill), *key[at + 1:])


def _read_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    found: dict[str, Any] = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            found[name] = item[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found
