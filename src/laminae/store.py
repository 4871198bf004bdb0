"""The activation store: one HDF5 file per layer, 2-D `(rows, width)` datasets per site, and a
`rows.tsv` that says what each row is.

Writing streams batch by batch into preallocated datasets inside a hidden temporary folder that
is renamed to `activations/` only when every row is written, so a crash leaves nothing behind:

    >>> with ActivationWriter(out_dir, n_layers=36, n_rows=34, attrs=attrs) as writer:
    ...     for start, batch in batches:                        # any number of rows per batch
    ...         writer.write(start, {"q": q_layers, ...})       # q_layers: (n_layers, rows, width)
    ...     writer.set_rows(rows)                               # list of dicts, one per row
    >>> store = ActivationStore(out_dir, expected_hash=attrs["stage_hash"])
    >>> store.read("q").shape                                   # (n_layers, n_rows, width)
    (36, 34, 1280)

Writes can also go layer by layer (`write_layer`), from another thread: `BackgroundWriter` runs
them in one thread while the caller computes (the extraction feeds it each block's rows while the
next blocks run); an error there is raised in the caller's thread, and the folder is not renamed.

`ActivationStore` validates before anything heavy: every layer file present and readable (a
truncated file is named), the stage hash as expected, and the row counts consistent.
"""

from __future__ import annotations

import csv
import filecmp
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from laminae.errors import InputFileError
from laminae.atomic import atomic_dir
from laminae.disk import disk_full_error, is_disk_full
from laminae.provenance import MODEL_ATTRS
from laminae.sites import SITES

ROWS_FILE = "rows.tsv"
CONFIG_FILE = "config.yaml"
FIDELITY_FILE = "fidelity.tsv"   # the extraction's first batch checked against the model (laminae.capture.fidelity)
REDUCTIONS = "reductions"   # activations/reductions/<experiment>/: what reducers computed during extraction
# Working-set target of one streamed chunk (every site as read, float32 for float16/32 stores).
CHUNK_BYTES = 256 * 2**20
# what to do about a damaged or foreign activation folder (Snakemake then reruns its extraction)
REBUILD = "delete the activations folder and rerun to rebuild it"
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Layer files are opened without HDF5's chunk cache: every row range is written once and read
# once, so a cache gains nothing, and HDF5 2.x keeps up to 8 MiB per dataset in it (1.1 GiB for
# GPT-2 Large's 36 files x 4 sites), growing with what is written and flushed only at close.
NO_CHUNK_CACHE = {"rdcc_nbytes": 0}


def layer_filename(layer: int, n_layers: int) -> str:
    """`layer_07.h5`: zero-padded to at least 2 digits, more for models with >= 100 layers."""
    return f"layer_{layer:0{max(2, len(str(n_layers - 1)))}d}.h5"


def escape_field(value: Any) -> str:
    """Make a value safe for one TSV cell: backslash, tab, newline and CR become \\\\, \\t, \\n, \\r."""
    text = str(value)
    return "".join(_ESCAPES.get(char, char) for char in text) if any(c in text for c in _ESCAPES) else text


def unescape_field(text: str) -> str:
    if "\\" not in text:
        return text
    out, chars = [], iter(text)
    reverse = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    for char in chars:
        out.append(reverse.get(next(chars, ""), "") if char == "\\" else char)
    return "".join(out)


def write_tsv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Tab-separated table with a header; control characters escaped, quotes CSV-quoted."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else escape_field(row[c]) for c in columns])


def read_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a table written by `write_tsv`, as strings (unescaped)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return [{key: unescape_field(value) for key, value in row.items()} for row in reader]


class RowTable(Sequence[Mapping[str, Any]]):
    """What each stored row is (rows.tsv), as a sequence of dicts with column accessors.

        >>> rows = RowTable([{"window": 0, "position": 0}, {"window": 0, "position": 1}])
        >>> rows.integers("position")                       # (n_rows,) int64
        array([0, 1])
        >>> rows.column("window")                           # as strings, as rows.tsv holds them
        ['0', '0']

    Three forms, one interface: records in memory (above, for small tables such as stimuli);
    `RowTable.from_tsv(path)`, which reads rows.tsv one column at a time when asked, never
    holding its records (a corpus of millions of tokens); and `RowTable.lazy(...)`, whose
    columns and records a function computes on demand (an extraction's corpus windows, read
    from disk). Iterating streams the records; indexing (`rows[i]`) loads them all once, so
    keep it for small tables."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), source: Path | str = ROWS_FILE):
        self._records: list[Mapping[str, Any]] | None = list(records)
        self.source = source
        self._n = len(self._records)
        self._names: tuple[str, ...] = tuple(self._records[0]) if self._records else ()
        self._column_of: Callable[[str], Sequence[Any]] | None = None
        self._iterate: Callable[[], Iterator[Mapping[str, Any]]] | None = None

    @classmethod
    def lazy(cls, n_rows: int, columns: Sequence[str], column: Callable[[str], Sequence[Any]],
             records: Callable[[], Iterator[Mapping[str, Any]]], source: Path | str = ROWS_FILE) -> "RowTable":
        """A table of `n_rows` whose `column(name)` (a sequence or an array of n_rows values) and
        `records()` (an iterator of dicts, in order) are computed when asked."""
        table = cls((), source)
        table._records, table._n, table._names = None, n_rows, tuple(columns)
        table._column_of, table._iterate = column, records
        return table

    @classmethod
    def from_tsv(cls, path: Path) -> "RowTable":
        """rows.tsv (written by `write_tsv`), read column by column when asked; counting its
        rows streams the file once."""
        path = Path(path)
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = tuple(next(reader, ()))
            n_rows = sum(1 for _ in reader)

        def column(name: str) -> list[str]:
            index = header.index(name)
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle, delimiter="\t")
                next(reader)
                return [unescape_field(row[index]) for row in reader]

        def records() -> Iterator[dict[str, str]]:
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t")
                for row in reader:
                    yield {key: unescape_field(value) for key, value in row.items()}

        return cls.lazy(n_rows, header, column, records, source=path)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._records) if self._records is not None else self._iterate()

    def __getitem__(self, index):  # type: ignore[override]
        if self._records is None:
            self._records = list(self._iterate())
        return self._records[index]

    @property
    def columns(self) -> tuple[str, ...]:
        return self._names

    def _values(self, name: str) -> Sequence[Any]:
        self._require(name)
        if self._records is not None:
            return [row[name] for row in self._records]
        return self._column_of(name)

    def column(self, name: str) -> list[str]:
        """One column, as strings."""
        values = self._values(name)
        if isinstance(values, np.ndarray):
            return values.astype(str).tolist()
        return [str(value) for value in values]

    def integers(self, name: str) -> np.ndarray:
        """One column of integers: (n_rows,) int64."""
        values = self._values(name)
        if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
            return values.astype(np.int64, copy=False)
        try:
            return np.fromiter((int(value) for value in values), dtype=np.int64, count=self._n)
        except ValueError:
            raise InputFileError(self.source, f"column {name!r} must hold integers") from None

    def _require(self, name: str) -> None:
        if self._n and name not in self._names:
            raise InputFileError(self.source, f"has no {name!r} column (columns: {', '.join(self.columns)})")


class ActivationWriter:
    """Streams activations into `out_dir/layer_NN.h5`, atomically (see module docstring).

    Layer files are created by the first write, datasets by the first write of a site (its
    width is known then), with exactly `n_rows` rows; every row of every site of every layer must
    be written before the block ends. With
    `store_layers=False` the folder holds only rows.tsv and config.yaml (and whatever the caller
    writes into `tmp_dir` before the block ends, such as an extraction's reductions). `links`
    ({site: another store's folder}) adds those sites as links to that store (`link_stored`)."""

    def __init__(self, out_dir: Path, n_layers: int, n_rows: int, attrs: Mapping[str, Any],
                 storage_dtype: str = "float32", compression: str | None = None, chunk_rows: int = 1024,
                 config_text: str = "", store_layers: bool = True, links: Mapping[str, Path] | None = None):
        self.out_dir = Path(out_dir)
        self.store_layers = store_layers
        self.links = dict(links or {})   # site -> the store it is linked from (link_stored)
        self.n_layers, self.n_rows = n_layers, n_rows
        self.attrs = dict(attrs)
        self.dtype = np.dtype(storage_dtype)
        self.compression, self.chunk_rows = compression, chunk_rows
        self.config_text = config_text
        self._rows: Sequence[Mapping[str, Any]] | None = None
        self._columns: Sequence[str] = ()
        self._first_row = 0
        self._written: dict[str, list[int]] = {}  # site -> rows written per layer
        self._files: list[h5py.File] = []
        self._datasets: dict[str, list[h5py.Dataset]] = {}  # site -> one dataset per layer file

    def __enter__(self) -> "ActivationWriter":
        self._atomic = atomic_dir(self.out_dir)
        self.tmp_dir = self._atomic.__enter__()
        return self

    def _open_files(self) -> None:
        """Create the layer files with their attributes, on the first write (so in the thread
        that writes: with a BackgroundWriter, while the model runs)."""
        if not self.store_layers:
            raise RuntimeError("this ActivationWriter stores no layer files (store_layers=False)")
        for layer in range(self.n_layers):
            handle = h5py.File(self.tmp_dir / layer_filename(layer, self.n_layers), "w", track_order=True,
                               **NO_CHUNK_CACHE)
            self._files.append(handle)
            handle.attrs.update({**self.attrs, "layer": layer, "n_layers": self.n_layers, "n_rows": self.n_rows,
                                 "storage_dtype": self.dtype.name})

    def write(self, start: int, batch: Mapping[str, np.ndarray | Sequence[np.ndarray]]) -> None:
        """Write rows `start : start + rows` of every site in `batch`: an array (n_layers, rows,
        width), or a sequence of n_layers arrays (rows, width), which spares stacking them."""
        for site, values in batch.items():
            if len(values) != self.n_layers:
                raise ValueError(f"{site}: expected {self.n_layers} layers, got {len(values)}")
            shape = np.shape(values[0])
            if len(shape) != 2 or any(np.shape(layer) != shape for layer in values):
                raise ValueError(f"{site}: every layer must be (rows, width) of one shape; got "
                                 f"{[np.shape(layer) for layer in values]}")
        for layer in range(self.n_layers):
            self.write_layer(layer, start, {site: values[layer] for site, values in batch.items()})

    def write_layer(self, layer: int, start: int, values: Mapping[str, np.ndarray]) -> None:
        """Write rows `start : start + rows` of layer `layer` for every site in `values`, each an
        array (rows, width). Layers may come in any order, from one thread at a time (h5py
        serialises its calls anyway)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} outside the {self.n_layers} declared")
        for site, array in values.items():
            shape = np.shape(array)
            if len(shape) != 2:
                raise ValueError(f"{site}: layer {layer} must be (rows, width); got {shape}")
            stop = start + shape[0]
            if stop > self.n_rows:
                raise ValueError(f"{site}: rows {start}:{stop} beyond the {self.n_rows} declared")
            if site not in self._written:
                self._create(site, shape[1])
            if shape[0]:
                _write_rows(self._datasets[site][layer], start, array)
            self._written[site][layer] += shape[0]

    def add_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Attributes known once the rows are written (the fidelity checks), on every layer file."""
        self.attrs.update(attrs)
        for handle in self._files:
            handle.attrs.update(attrs)

    def set_rows(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], first_row: int = 0) -> None:
        """The row descriptions (a sequence of n_rows dicts: a list or a RowTable, iterated once
        when the store is finished, so a lazy table is never held whole), written to rows.tsv
        with a leading `row` column counted from `first_row` (a shard's first row in the corpus)."""
        if len(rows) != self.n_rows:
            raise ValueError(f"rows.tsv: expected {self.n_rows} rows, got {len(rows)}")
        self._rows, self._columns, self._first_row = rows, columns, first_row

    def _create(self, site: str, width: int) -> None:
        if not self._files:
            self._open_files()
        chunks = (min(self.chunk_rows, self.n_rows), width) if self.n_rows else None
        self._datasets[site] = [
            handle.create_dataset(site, shape=(self.n_rows, width), dtype=self.dtype, chunks=chunks,
                                  compression=self.compression, track_times=False)
            for handle in self._files]
        self._written[site] = [0] * self.n_layers

    def __exit__(self, exc_type, exc, tb) -> None:
        failure = exc
        closing = self._close_files(discard=failure is not None)
        if failure is None and closing is None:
            try:
                self._finish()
                self._atomic.__exit__(None, None, None)   # the rename into place
                return
            except BaseException as error:  # noqa: BLE001 - the folder is dropped below
                failure = error
        failure = failure or closing
        try:  # every file is closed: drop the temporary folder
            self._atomic.__exit__(type(failure), failure, failure.__traceback__)
        except BaseException:  # noqa: BLE001 - atomic_dir re-raises `failure`: raised below
            pass
        if is_disk_full(failure):  # one line, not HDF5's error stack
            raise disk_full_error(self.out_dir, "the activation store") from failure
        if failure is not exc:
            raise failure

    def _close_files(self, discard: bool) -> BaseException | None:
        """Close every layer file, each even when another fails; return the first error. With
        `discard` (the store is dropped), each file is emptied first, so HDF5 can flush its
        metadata and close even on a full disk (left open, HDF5 retries at exit: tracebacks,
        and a crash)."""
        first = None
        for handle in self._files:
            try:
                if discard and handle.id.valid:
                    os.truncate(handle.filename, 0)
                handle.close()
            except BaseException as error:  # noqa: BLE001 - the first is returned
                first = first or error
        self._files, self._datasets = [], {}
        return first

    def _finish(self) -> None:
        written = {site: min(rows) for site, rows in self._written.items()}  # the least-written layer's
        if any(n != self.n_rows for n in written.values()) or (self.store_layers and not self._written):
            raise RuntimeError(f"activation store incomplete: rows written {written} of {self.n_rows}")
        if self._rows is None:
            raise RuntimeError("activation store: set_rows() was never called")
        rows = ({"row": index, **row} for index, row in enumerate(self._rows, start=self._first_row))
        write_tsv(self.tmp_dir / ROWS_FILE, rows, ["row", *self._columns])
        if self.links:
            link_stored(self.tmp_dir, self.links, self.n_layers, self.n_rows,
                        {**self.attrs, "storage_dtype": self.dtype.name})
        (self.tmp_dir / CONFIG_FILE).write_text(self.config_text, encoding="utf-8")


class BackgroundWriter:
    """One thread that runs write jobs while the caller goes on computing; a context manager.

        >>> with ActivationWriter(out_dir, n_layers, n_rows, attrs) as writer, BackgroundWriter() as background:
        ...     background.submit(lambda: writer.write_layer(layer, start, {"q": rows}), done=release)
        ...     background.check()          # raises here the first error of the thread, if any

    Jobs run in submission order. `done` (optional) runs after its job whatever happened,
    also once the thread has failed, when the remaining jobs are skipped: a caller that recycles
    buffers through `done` is never left waiting. The first error is raised by `check()`,
    `submit()` and the block's exit (which waits for every job); an error in the caller's block
    skips the jobs not started yet, waits for the one running, and propagates. So no write runs
    after the block, and the ActivationWriter around it can close its files and drop its folder."""

    _STOP = object()

    def __init__(self, name: str = "laminae-writer"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._skip = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._skip = True  # the caller failed: finish nothing more
        self._jobs.put(self._STOP)
        self._thread.join()
        if exc_type is None:
            self.check()

    def submit(self, job: Callable[[], Any], done: Callable[[], Any] | None = None) -> None:
        """Queue `job` (then `done`, always); raises the thread's error if it has failed."""
        self.check()
        self._jobs.put((job, done))

    def check(self) -> None:
        """Raise the first error of a job, if any (in the caller's thread)."""
        if self._error is not None:
            raise self._error

    @property
    def failed(self) -> bool:
        return self._error is not None

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is self._STOP:
                return
            job, done = item
            try:
                if self._error is None and not self._skip:
                    job()
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                self._error = error
            finally:
                if done is not None:
                    try:
                        done()
                    except BaseException as error:  # noqa: BLE001
                        self._error = self._error or error


def _write_rows(dataset: h5py.Dataset, start: int, values: np.ndarray) -> None:
    """dataset[start : start + len(values)] = values; through `write_direct` (no selection
    parsing, no temporary) when `values` is C-contiguous in the dataset's dtype."""
    if isinstance(values, np.ndarray) and values.dtype == dataset.dtype and values.flags.c_contiguous:
        dataset.write_direct(values, dest_sel=np.s_[start : start + values.shape[0]])
    else:
        dataset[start : start + len(values)] = values


class ActivationStore:
    """Read-only view of an `activations/` folder, validated on construction."""

    def __init__(self, directory: str | Path, expected_hash: str | None = None):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise InputFileError(self.dir, "activation folder not found; run the extraction stage first")
        first = self._layer_paths_from_any()
        self.attrs = self._read_attrs(first)
        self.n_layers = int(self.attrs["n_layers"])
        self.n_rows = int(self.attrs["n_rows"])
        if expected_hash is not None and self.attrs.get("stage_hash") != expected_hash:
            raise InputFileError(first, f"stage hash {self.attrs.get('stage_hash')!r} does not match the config's "
                                        f"{expected_hash!r}; these activations come from another config: {REBUILD}")
        self.paths = [self.dir / layer_filename(layer, self.n_layers) for layer in range(self.n_layers)]
        self.widths: dict[str, int] = {}
        for path in self.paths:
            self._check_layer_file(path, expected_hash or self.attrs.get("stage_hash"))
        order = {site: index for index, site in enumerate(SITES)}   # a composite store links sites after its own
        self.widths = dict(sorted(self.widths.items(), key=lambda item: order.get(item[0], len(order))))
        rows_path = self.dir / ROWS_FILE
        if not rows_path.is_file():
            raise InputFileError(rows_path, "missing; the activation folder is incomplete")
        self.rows = RowTable.from_tsv(rows_path)
        if len(self.rows) != self.n_rows:
            raise InputFileError(rows_path, f"has {len(self.rows)} rows but the layer files have {self.n_rows}")

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.widths)

    def column(self, name: str) -> list[str]:
        """One column of rows.tsv, as strings."""
        return self.rows.column(name)

    @property
    def model_attrs(self) -> dict[str, Any]:
        """The model's attributes (model_id, family, n_layers, d_model, n_heads, ...)."""
        return {key: self.attrs[key] for key in MODEL_ATTRS if key in self.attrs}

    def require(self, sites: Sequence[str], reader: str) -> None:
        """InputFileError naming the folder unless every site is stored."""
        missing = [site for site in sites if site not in self.widths]
        if missing:
            raise InputFileError(self.dir, f"has no {missing[0]!r} activations (stored: {', '.join(self.widths)}); "
                                           f"{reader} needs {', '.join(sites)}: {REBUILD}")

    def read_dtype(self) -> np.dtype:
        """float32 for float16/float32 stores (exact for metrics computed in float64), else float64."""
        storage = str(self.attrs.get("storage_dtype", "float32"))
        return np.dtype(np.float32) if storage in ("float16", "float32") else np.dtype(np.float64)

    def chunk_rows(self, sites: Sequence[str], budget_bytes: int = CHUNK_BYTES) -> int:
        """Rows per streamed chunk: a chunk of every site (plus the per-layer pieces of the one
        being stacked) within `budget_bytes`, aligned with the HDF5 chunks (a multiple or a
        divisor of their row count): a read that straddles HDF5 chunks costs about 3x the time."""
        widths = [self.widths[site] for site in sites]
        bytes_per_row = self.n_layers * (sum(widths) + max(widths)) * self.read_dtype().itemsize
        rows = max(1, budget_bytes // max(bytes_per_row, 1))
        with h5py.File(self.paths[0], "r") as handle:
            chunks = _stored_chunks(handle[sites[0]], self.paths[0])
        stored = int(chunks[0]) if chunks else None
        if stored:
            rows = rows // stored * stored if rows >= stored else max(d for d in range(1, rows + 1) if stored % d == 0)
        return int(min(max(self.n_rows, 1), rows))

    def read(self, site: str, layers: Sequence[int] | None = None, dtype: Any = np.float64) -> np.ndarray:
        """All rows of `site`: (n_layers, n_rows, width), upcast to `dtype`."""
        self._require(site)
        layers = range(self.n_layers) if layers is None else layers
        out = None
        for index, layer in enumerate(layers):
            with h5py.File(self.paths[layer], "r", **NO_CHUNK_CACHE) as handle:
                data = handle[site]
                if out is None:
                    out = np.empty((len(layers), *data.shape), dtype=dtype)
                data.read_direct(out[index])
        return out

    def iter_chunks(self, sites: Sequence[str], chunk_rows: int = 8192, dtype: Any = np.float64
                    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Stream rows without loading a whole corpus: yields (start, {site: (n_layers, rows, width)})."""
        for site in sites:
            self._require(site)
        handles = [h5py.File(path, "r", **NO_CHUNK_CACHE) for path in self.paths]
        try:
            for start in range(0, self.n_rows, chunk_rows):
                stop = min(start + chunk_rows, self.n_rows)
                yield start, {site: np.stack([h[site][start:stop] for h in handles]).astype(dtype, copy=False)
                              for site in sites}
        finally:
            for handle in handles:
                handle.close()

    def _require(self, site: str) -> None:
        if site not in self.widths:
            raise InputFileError(self.dir, f"has no {site!r} activations (stored: {', '.join(self.widths)}); "
                                           "add it to extract.sites and rerun extraction")

    def _layer_paths_from_any(self) -> Path:
        candidates = sorted(self.dir.glob("layer_*.h5"))
        if not candidates:
            raise InputFileError(self.dir, "holds no layer_NN.h5 files")
        return candidates[0]

    @staticmethod
    def _read_attrs(path: Path) -> dict[str, Any]:
        try:
            with h5py.File(path, "r") as handle:
                attrs = dict(handle.attrs)
        except OSError:
            raise InputFileError(path, f"is not a readable HDF5 file (truncated or corrupt); {REBUILD}") from None
        for key in ("n_layers", "n_rows", "stage_hash"):
            if key not in attrs:
                raise InputFileError(path, f"lacks the attribute {key!r}; not written by laminae")
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}

    def _check_layer_file(self, path: Path, expected_hash: str | None) -> None:
        if not path.is_file():
            raise InputFileError(path, f"missing; expected {self.n_layers} layer files")
        try:
            with h5py.File(path, "r") as handle:
                if handle.attrs.get("stage_hash") != expected_hash:
                    raise InputFileError(path, f"stage hash {handle.attrs.get('stage_hash')!r} differs from "
                                               f"{expected_hash!r}; the folder mixes runs: {REBUILD}")
                for site, data in handle.items():
                    if data.ndim != 2 or data.shape[0] != self.n_rows:
                        raise InputFileError(path, f"dataset {site!r} has shape {data.shape}, expected ({self.n_rows}, width)")
                    self.widths.setdefault(site, data.shape[1])
                    if data.is_virtual:  # sharded or linked: HDF5 would read a missing source as fill values
                        _check_sources(path, site, data, handle.attrs.get("weights_fingerprint"))
                    data[-1:]  # touch the last row: a truncated file fails here, not mid-analysis
        except OSError:
            raise InputFileError(path, f"is not a readable HDF5 file (truncated or corrupt); {REBUILD}") from None


# ------------------------------------------------------------------------ sharded stores
def _stored_chunks(dataset: h5py.Dataset, path: Path) -> tuple[int, ...] | None:
    """The HDF5 chunk shape of a dataset, or of the first file behind a virtual one (a shard, or
    a linked store's dataset, itself virtual when that store is sharded)."""
    if not dataset.is_virtual:
        return dataset.chunks
    source = dataset.virtual_sources()[0]
    with h5py.File(path.parent / source.file_name, "r") as handle:
        return _stored_chunks(handle[source.dset_name], path.parent / source.file_name)


def _check_sources(path: Path, site: str, dataset: h5py.Dataset, weights: str | None = None) -> None:
    """Every file a virtual dataset maps (a shard's, a linked store's, and theirs in turn) exists,
    holds its rows, and was made from the same weights."""
    for source in dataset.virtual_sources():
        target = path.parent / source.file_name
        if not target.is_file():
            raise InputFileError(target, f"missing: {path.name} reads its {site!r} rows from it (a sharded store, "
                                         f"or a store that links sites stored before); {REBUILD}")
        low, high = source.vspace.get_select_bounds()
        rows = high[0] - low[0] + 1
        try:
            with h5py.File(target, "r") as handle:
                if site not in handle or handle[site].shape[0] != rows:
                    raise InputFileError(target, f"does not hold the {rows} {site!r} rows {path.name} maps; {REBUILD}")
                made_with = handle.attrs.get("weights_fingerprint")
                if weights is not None and made_with is not None and made_with != weights:
                    raise InputFileError(target, f"was made from other weights ({made_with!r:.40}) than {path} "
                                                 f"({weights!r:.40}), which links its {site!r}: {REBUILD}")
                if handle[site].is_virtual:
                    _check_sources(target, site, handle[site], weights)
                else:
                    handle[site][-1:]
        except OSError:
            raise InputFileError(target, f"is not a readable HDF5 file (truncated or corrupt); {REBUILD}") from None


def link_shards(out_dir: Path, shard_dirs: Sequence[Path], shard_rows: Sequence[int],
                attrs: Mapping[str, Any]) -> list[Path]:
    """Layer files in `out_dir` whose datasets are HDF5 virtual datasets over the shards' layer
    files, in order (the `shard_rows[0]` rows of shard 0, then shard 1's, ...), so any HDF5
    reader sees one store of sum(shard_rows) rows.

    Source paths are written relative to `out_dir` (HDF5 resolves them from the virtual file's
    folder), so a moved project still reads; `out_dir` may be a temporary sibling of the final
    folder. Each layer file gets the first shard's attributes, `n_rows` the total, and `attrs`
    on top. Returns the files written: none when the shards store no layers (every experiment
    computed during extraction)."""
    out_dir = Path(out_dir)
    total = int(sum(shard_rows))
    written = []
    for template in sorted(Path(shard_dirs[0]).glob("layer_*.h5")):
        with h5py.File(template, "r") as source, \
                h5py.File(out_dir / template.name, "w", track_order=True, **NO_CHUNK_CACHE) as target:
            target.attrs.update({**dict(source.attrs), "n_rows": total, **attrs})
            for site, dataset in source.items():
                width = dataset.shape[1]
                layout = h5py.VirtualLayout(shape=(total, width), dtype=dataset.dtype)
                start = 0
                for shard, rows in zip(shard_dirs, shard_rows):
                    if rows:
                        relative = os.path.relpath(Path(shard) / template.name, out_dir)
                        layout[start : start + rows] = h5py.VirtualSource(relative, site, shape=(rows, width))
                    start += rows
                target.create_virtual_dataset(site, layout, fillvalue=np.nan)
        written.append(out_dir / template.name)
    return written


def link_stored(out_dir: Path, sources: Mapping[str, Path], n_layers: int, n_rows: int,
                attrs: Mapping[str, Any]) -> None:
    """Add each site of `sources` ({site: another store's activations folder}) to the layer files
    in `out_dir` as an HDF5 virtual dataset over that store's dataset (a relative path, as
    `link_shards` writes), creating the layer files with `attrs` where `out_dir` stores no site
    of its own. The stores must be of the same rows: `out_dir`'s rows.tsv (written first) must
    equal each one's, byte for byte; InputFileError naming the store otherwise.

        >>> link_stored(tmp, {"q": Path(".../inputs-3fa9c2d1e0/activations")}, n_layers=12, n_rows=34, attrs=attrs)
    """
    if not sources:
        return
    out_dir = Path(out_dir)
    for store in dict.fromkeys(Path(folder) for folder in sources.values()):
        if not filecmp.cmp(out_dir / ROWS_FILE, store / ROWS_FILE, shallow=False):
            raise InputFileError(store / ROWS_FILE, f"differs from the rows this extraction computed ({out_dir / ROWS_FILE}): "
                                                    f"its sites cannot be linked; {REBUILD}")
    for layer in range(n_layers):
        name = layer_filename(layer, n_layers)
        with h5py.File(out_dir / name, "a", track_order=True, **NO_CHUNK_CACHE) as target:
            if "n_rows" not in target.attrs:
                target.attrs.update({**attrs, "layer": layer, "n_layers": n_layers, "n_rows": n_rows})
            for site, store in sources.items():
                with h5py.File(Path(store) / name, "r") as source:
                    dataset = source[site]
                    if dataset.shape[0] != n_rows:
                        raise InputFileError(Path(store) / name, f"holds {dataset.shape[0]} {site!r} rows, not {n_rows}; "
                                                                 f"{REBUILD}")
                    layout = h5py.VirtualLayout(shape=dataset.shape, dtype=dataset.dtype)
                    layout[:] = h5py.VirtualSource(os.path.relpath(Path(store) / name, out_dir), site,
                                                   shape=dataset.shape)
                target.create_virtual_dataset(site, layout, fillvalue=np.nan)


def copy_reductions(out_dir: Path, sources: Mapping[str, Path]) -> None:
    """Copy each experiment's results computed during another store's extraction
    ({experiment: that store's activations folder}) into `out_dir/reductions/<experiment>/`."""
    for name, store in sources.items():
        source = Path(store) / REDUCTIONS / name
        if not source.is_dir():
            raise InputFileError(source, f"missing: the store holds no {name!r} reduction; {REBUILD}")
        shutil.copytree(source, Path(out_dir) / REDUCTIONS / name)
