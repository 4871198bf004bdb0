"""The plug-in interface: what an experiment declares, and what laminae hands its functions.

An experiment is one folder (a Python package) whose `__init__.py` holds `EXPERIMENT =
Experiment(...)`, plus its config group (`conf/<name>/default.yaml`, or `default.yaml` in the
folder). Everything else (config composition and hashing, the shared extraction, job sizes, the
Snakemake rules, the report) is generic and reads only this declaration. A complete example,
runnable as it stands (docs/WRITING_AN_EXPERIMENT.md walks through it):

    from laminae.experiment import Experiment, Figure

    def reducer(job):                     # streams the store: chunks of (n_layers, rows, width)
        return NormReducer(job.n_layers)

    def plot(job):                        # metrics/ -> figures/
        table = read_tsv(job.metrics_dir / "norms.tsv")
        fig, ax = plt.subplots()
        ...
        job.save(fig, "norms")            # figures/norms.png and .pdf, at plot.dpi

    EXPERIMENT = Experiment(
        name="norms", title="Residual stream norms", inputs="corpus",
        sites=("resid_post",), metrics=("norms.tsv",),
        figures=(Figure("norms", caption="caption.rst", label="laminar profile"),),
        reducer=reducer, plot=plot)

Hooks are callables, or "module:function" strings resolved against the experiment's package
(`".figures:plot"`), so a declaration can name heavy code without importing it: the workflow
imports every declaration whenever Snakemake builds its DAG, and only the job that runs a hook
imports what the hook needs.

Each hook receives one job object (below) and writes plain files into `job.out_dir`; laminae
makes every stage's folder appear atomically, adds `config.yaml` and provenance, and checks that
the declared files were written.

- `analyse(AnalysisJob)`: the whole activation store -> the files in `metrics`.
- `reducer(ReducerJob) -> Reducer`: the streaming alternative: `update(start, chunk)` per chunk
  of rows, then `finish()`. laminae feeds it from the store, or, when the
  experiment's `during_extraction` key is true, straight from the model while it runs (then
  no activations are stored for it). Declare one of `analyse` and `reducer`. To run during a
  sharded extraction (`corpus.shards`), a reducer also offers `partial()` and
  `absorb(start, folder)` (see `Reducer`).
- `plot(FigureJob)`: metrics -> the declared `figures`.
- `compare(CompareJob) -> matplotlib Figure`: the overlay of several runs of a sweep (optional).
- `validate(cfg)`: checks the schema cannot express (raise `ConfigError`), before any job.
- `resources(stage, JobShape, cfg) -> {"mem_mb", "runtime"}`: how the analysis ("analysis") and
  figure ("plot") jobs scale, from the run's config (optional; the default: every stored value
  read once).
- `across`: an `Across` declaration: an analysis over the activations of SEVERAL runs of a
  sweep (models, checkpoints), rows matched across them (`AcrossJob`), with its own metrics and
  figures; a sweep schedules it once per group of runs (`<results>/sweeps/<name>-across-<h>/`).
- `measure(MeasureJob) -> {name: Series | Sample}`: the experiment's headline measurements read
  back from its metrics (optional): per-layer series with their uncertainty, and per-value
  samples of a distribution (`laminae.series`). Declare their names in `measures`. The claims
  of its config group (`<name>.claims`, checked by `laminae.claims`) are evaluated on them in a
  stage of their own, and other features (sweep heatmaps) read them the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Union

if TYPE_CHECKING:  # only for annotations: the declaration stays importable without numpy/h5py
    import numpy as np
    from matplotlib.figure import Figure as MplFigure

    from laminae.models.readout import ModelSource, Readout
    from laminae.store import ActivationStore, RowTable

#: A hook: a callable, or "module:function" (a leading dot: relative to the experiment's package).
Hook = Union[Callable[..., Any], str]

#: What a reducer offers to run during a sharded extraction (see `Reducer`).
SHARD_METHODS = ("partial", "absorb")

#: What the model reads; each kind is a module of `laminae.inputs`.
INPUT_KINDS = ("stimuli", "corpus")

#: What an experiment may need of the model beyond its sites (`Experiment.needs`):
#: "readout", the final norm and unembedding (`AnalysisJob.readout`), which encoders lack.
NEEDS = ("readout",)


@dataclass(frozen=True)
class Figure:
    """One figure an experiment draws: `figures/<name>.png` and `.pdf`.

    `caption` is the report caption, a path relative to the experiment's folder: reStructuredText
    that Snakemake renders with Jinja, where `snakemake.params.context` holds the run's labels
    (model, inputs, analysis settings) and `snakemake.params.stage["config"]` the figure stage's
    config; `label` names the figure in the report."""

    name: str
    caption: str
    label: str


@dataclass(frozen=True)
class Variant:
    """Outputs an experiment writes only under some settings, e.g. per-head tables:

        Variant("heads", when=lambda settings: settings["resolution"] == "heads",
                metrics=("qkv_heads.tsv",), figures=(Figure("qkv_heads", "captions/heads.rst", "per head"),))

    A run whose settings enable variants keeps its analysis in `<name>+<variant>/` beside the
    plain `<name>/`, and gets rules `<name>_analysis_<variant>` etc., so both can be in one DAG."""

    name: str
    when: Callable[[Mapping[str, Any]], bool]   # the experiment's analysis settings -> enabled?
    metrics: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Measure:
    """One measurement an experiment's `measure` hook returns, declared so that claims naming it
    are checked before anything runs:

        Measure("rsa:q-k", "RSA between Q and K per layer, 95% bootstrap CI")
        Measure("cosine_tokens", "every included token x layer cosine", kind="sample")

    `kind` "layers": a `laminae.series.Series` (one value per layer, optionally an interval and
    p/q-values); "sample": a `laminae.series.Sample` (values pooled over tokens and layers, each
    with its layer and resampling unit, optionally a group mask). A run may lack a declared
    measure (e.g. a component left out by the config): claims on it are then not applicable."""

    name: str       # [a-z][a-z0-9_]* with optional ':'-separated qualifiers, e.g. "pearson_mlp_hs:all"
    what: str       # one line: what it is and what its interval is
    kind: str = "layers"
    headline: str = ""   # a short label ("RSA Q-K") makes it a headline metric: sweeps across training draw it


MEASURE_KINDS = ("layers", "sample")


@dataclass(frozen=True)
class Across:
    """An analysis across the runs of a sweep that reads their activation stores, not only their
    metrics (e.g. CKA between two models' layers):

        Across(analyse=".across:analyse", plot=".across:plot", metrics=("cka_across.tsv",),
               figures=(Figure("cka_across", "captions/across.rst", "between runs"),))

    `analyse(AcrossJob)` writes `metrics` into `job.out_dir`; `plot(FigureJob)` draws `figures`
    from them (`job.context`: `labels`, `models`, `match_rule`, `steps`). A sweep schedules one
    stage per group of runs with the same analysis settings and different extractions, keyed by
    their extraction hashes and the settings; runs whose rows cannot be matched (other stimuli,
    another corpus) stop the sweep in one line before any job."""

    analyse: Hook
    plot: Hook
    metrics: tuple[str, ...]
    figures: tuple[Figure, ...]

    def hook(self, name: str, package: str) -> Callable[..., Any]:
        return resolve_hook(getattr(self, name), package)


@dataclass(frozen=True)
class Experiment:
    """The declaration of one experiment (see the module docstring)."""

    name: str                          # config group, results folder, rule names: [a-z][a-z0-9_]*
    title: str                         # report category, e.g. "Experiment 2: attention vs MLP adjustments"
    inputs: str | tuple[str, ...]      # one of INPUT_KINDS, or several: `<name>.inputs` chooses (first: default)
    sites: tuple[str, ...]             # the stored sites the analysis reads (laminae.models.adapters.SITES)
    metrics: tuple[str, ...]           # files the analysis writes into metrics/; the first is its table
    figures: tuple[Figure, ...]
    plot: Hook
    analyse: Hook | None = None
    reducer: Hook | None = None
    compare: Hook | None = None
    compare_caption: str | None = None  # report caption of the sweep overlay (relative to the folder)
    validate: Hook | None = None
    resources: Hook | None = None
    variants: tuple[Variant, ...] = ()   # outputs written only under some settings
    across: Across | None = None         # an analysis over several runs' stores (sweeps)
    measure: Hook | None = None        # metrics -> {name: Series | Sample} (laminae.series); claims use it
    measures: tuple[Measure, ...] = ()   # what `measure` returns, by name (claims are checked against it)
    needs: tuple[str, ...] = ()        # of NEEDS: runs on models without it are skipped (laminae.config.needs)
    schema: str | Mapping[str, Any] = "schema.yaml"   # JSON schema of the config group (file or dict)
    config: str = "default.yaml"       # the group's defaults, when the project's conf/ has no <name>/
    version: int = 1                   # bump when its code changes: cached analyses and figures are redone
    module: str = ""                   # set by the registry: the package the declaration lives in
    folder: Path = field(default=Path("."))  # set by the registry: the package's folder
    site_key: str | None = None        # a key of its group naming the site(s) of `sites` a run reads
    input_kinds: tuple[str, ...] = ()  # every kind it can read: set from `inputs` (`reading` keeps it)
    declared_sites: tuple[str, ...] = ()   # `sites` as declared (a run's copy may read fewer: `site_key`)
    _readings: dict[Any, "Experiment"] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, str):    # several kinds: the first is the default
            kinds = tuple(self.inputs)
            object.__setattr__(self, "input_kinds", kinds)
            object.__setattr__(self, "inputs", kinds[0] if kinds else "")
        elif not self.input_kinds:
            object.__setattr__(self, "input_kinds", (self.inputs,))
        if not self.declared_sites:
            object.__setattr__(self, "declared_sites", tuple(self.sites))

    def reading(self, kind: str, sites: tuple[str, ...] | None = None) -> "Experiment":
        """This experiment on inputs `kind` (one of `input_kinds`) reading `sites` (default: all
        declared): the same object for the same choice, so that what is checked once per
        experiment (its claims) stays checked once."""
        sites = self.declared_sites if sites is None else tuple(sites)
        if kind == self.inputs and sites == self.sites:
            return self
        if (kind, sites) not in self._readings:
            self._readings[kind, sites] = dataclasses.replace(self, inputs=kind, sites=sites)
        return self._readings[kind, sites]

    def for_config(self, cfg: Mapping[str, Any]) -> "Experiment":
        """The experiment as a config runs it: on the inputs it chooses (`<name>.inputs`, for an
        experiment that reads several kinds, e.g. `attention.inputs=stimuli`), reading the sites
        it names (`<name>.<site_key>`, e.g. `cka.site=q`: only that site is stored for it).
        `cfg` is a whole config, or a stage's (`{<name>: settings}`)."""
        if len(self.input_kinds) < 2 and self.site_key is None:
            return self
        group = cfg.get(self.name, {})
        kind = group.get("inputs", self.inputs) if len(self.input_kinds) > 1 else self.inputs
        sites = None
        if self.site_key is not None and self.site_key in group:
            from laminae.errors import ConfigError

            chosen = group[self.site_key]
            chosen = (chosen,) if isinstance(chosen, str) else tuple(chosen)
            if not chosen or any(site not in self.declared_sites for site in chosen):
                raise ConfigError(f"{self.name}.{self.site_key}", f"sites among {', '.join(self.declared_sites)}",
                                  group[self.site_key])
            sites = tuple(site for site in self.declared_sites if site in chosen)
        return self.reading(kind, sites)

    @property
    def streams(self) -> bool:
        """True when the analysis is a reducer (it may then run during extraction)."""
        return self.reducer is not None

    def merges_shards(self) -> bool:
        """False when its reducer cannot run during a sharded extraction: a reducer class
        without `partial` and `absorb` (imports the reducer's module). A hook that is a plain
        function is checked on the reducer it returns, in the shard's job before the forward."""
        if self.reducer is None:
            return False
        reducer = self.hook("reducer")
        return not isinstance(reducer, type) or all(callable(getattr(reducer, name, None))
                                                    for name in SHARD_METHODS)

    def active_variants(self, settings: Mapping[str, Any]) -> tuple[str, ...]:
        """The names of the variants `settings` (the analysis settings) enable, in declared order."""
        return tuple(variant.name for variant in self.variants if variant.when(settings))

    def metrics_for(self, variants: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The metrics files of a run with `variants` enabled."""
        return (*self.metrics, *(f for v in self.variants if v.name in variants for f in v.metrics))

    def figures_for(self, variants: tuple[str, ...] = ()) -> tuple[Figure, ...]:
        """The figures of a run with `variants` enabled."""
        return (*self.figures, *(f for v in self.variants if v.name in variants for f in v.figures))

    def folder_name(self, variants: tuple[str, ...] = ()) -> str:
        """`qkv`, or `qkv+heads` with variant `heads` enabled: the folder of its analyses."""
        return "+".join((self.name, *variants))

    def rule_suffix(self, variants: tuple[str, ...] = ()) -> str:
        """`""`, or `"_heads"`: appended to the names of the rules of a run with `variants`; on
        inputs other than its default kind, the kind first (`"_stimuli"`, `"_stimuli_heads"`)."""
        kind = () if self.inputs == self.input_kinds[0] else (self.inputs,)
        return "".join(f"_{part}" for part in (*kind, *variants))

    def hook(self, name: str) -> Callable[..., Any]:
        """The callable behind hook `name` ("analyse", "plot", ...), importing it if needed."""
        target = getattr(self, name)
        if target is None:
            raise AttributeError(f"experiment {self.name!r} declares no {name!r} hook")
        return resolve_hook(target, self.module)

    def path(self, relative: str) -> Path:
        """A file of the experiment's folder (a caption, its schema)."""
        return self.folder / relative


def resolve_hook(target: Hook, package: str) -> Callable[..., Any]:
    """A callable as given, or "module:function" imported (relative to `package`)."""
    if callable(target):
        return target
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name, package=package or None)
    return getattr(module, attribute)


# ------------------------------------------------------------------------------ what hooks get
def _readout(source: "ModelSource | None", device: str | None) -> "Readout":
    if source is None:
        raise RuntimeError("this job was built without its model (ModelSource): no readout; the stages of "
                           "laminae.stages give one")
    return source.readout(device)


@dataclass(frozen=True)
class AnalysisJob:
    """What `analyse` gets: the validated store and where to write.

        >>> q = job.store.read("q")                   # (n_layers, n_rows, width), float64
        >>> job.store.rows.column("category")         # rows.tsv, one value per row
        >>> (job.out_dir / "table.tsv").write_text(...)
    """

    settings: Mapping[str, Any]     # the experiment's config group, without its `plot` keys
    store: "ActivationStore"
    out_dir: Path
    attrs: Mapping[str, Any]        # provenance: put these on every HDF5 file written
    model: "ModelSource | None" = None   # the run's model, for `readout()`

    def readout(self, device: str | None = None) -> "Readout":
        """The run's model's next-token readout (`laminae.models.readout.Readout`: final norm,
        unembedding, softcap; only those tensors are read), built on first use, one per device
        (None: `model.device`, cpu unless the stage says otherwise):

            >>> logits = job.readout().logits(job.store.read("resid_post", layers=[5])[0])  # (rows, vocab)
        """
        return _readout(self.model, device)


@dataclass(frozen=True)
class ReducerJob:
    """What `reducer` gets to build its accumulator: the same whether the chunks come from a
    store or from the model during extraction.

        >>> position = job.rows.integers("position")  # (n_rows,) from rows.tsv
        >>> handle = h5py.File(job.out_dir / "per_token.h5", "w")   # may be filled as chunks arrive
    """

    settings: Mapping[str, Any]
    rows: "RowTable"                # what each row is (rows.tsv), e.g. rows.integers("position")
    n_layers: int
    widths: Mapping[str, int]       # site -> width
    model_attrs: Mapping[str, Any]  # the model's attributes (n_heads, d_model, family, ...)
    out_dir: Path                   # where `finish` (or `update`) writes the declared metrics files
    attrs: Mapping[str, Any]        # provenance: put these on every HDF5 file written
    model: "ModelSource | None" = None   # the run's model, for `readout()`

    def readout(self, device: str | None = None) -> "Readout":
        """The run's model's next-token readout, as `AnalysisJob.readout` (during extraction on
        the extraction's device unless told otherwise)."""
        return _readout(self.model, device)


class Reducer(Protocol):
    """A streaming analysis: chunks of rows in order, then one call to `finish`."""

    def update(self, start: int, chunk: Mapping[str, "np.ndarray"]) -> None:
        """Rows `start : start + rows` of every declared site, each (n_layers, rows, width),
        float32 or float64: compute in float64."""

    def finish(self) -> None:
        """Write the declared metrics files into the job's `out_dir`."""

    # Optional: a reducer that offers these two can run during a sharded extraction
    # (`corpus.shards` > 1 with `<name>.during_extraction`); without them that combination is
    # refused with one line before any job. Each shard's reducer, built over the shard's rows,
    # gets its chunks and then `partial()`; the gather builds the reducer over every row, calls
    # `absorb(start, folder)` for each shard in row order, then `finish()`. The result must equal
    # an unsharded run's: keep per-token values as they are and merge running statistics
    # exactly (`RunningMoments.merge`, `laminae.partials`).
    #
    # def partial(self) -> None:
    #     """Instead of `finish`, in a shard: write into `out_dir` what `absorb` needs."""
    #
    # def absorb(self, start: int, part: Path) -> None:
    #     """Instead of the chunks of rows `start : start + n`: take them from a shard's
    #     `partial` (its folder `part`, holding what `partial` wrote)."""


@dataclass(frozen=True)
class FigureJob:
    """What `plot` gets: the metrics, the figure settings, and labels for titles.

        >>> fig, ax = plt.subplots()
        >>> job.save(fig, "laminar")         # figures/laminar.png (at plot.dpi) and .pdf
    """

    settings: Mapping[str, Any]     # the experiment's analysis settings (as the metrics were made)
    plot: Mapping[str, Any]         # its `plot` keys
    dpi: int
    metrics_dir: Path
    out_dir: Path
    context: Mapping[str, Any]      # model, random_weights, inputs (stimuli/template/corpus), analysis
    # reported results of the experiment's claims, to draw as reference bands
    # (`laminae.plots.references.draw_references(ax, job.references, n_layers, series=...)`)
    references: Sequence[Mapping[str, Any]] = ()

    def save(self, fig: "MplFigure", name: str) -> list[Path]:
        from laminae.plots.style import save_figure

        return save_figure(fig, self.out_dir / f"{name}.png", dpi=self.dpi)


@dataclass(frozen=True)
class AcrossJob:
    """What `Across.analyse` gets: several runs' stores, their rows matched.

        >>> q0 = job.read(0, "resid_post")           # (n_layers of run 0, n_matched, width), float64
        >>> q1 = job.read(1, "resid_post")           # the same matched items, in the same order
        >>> job.labels, job.match_rule               # what tells the runs apart; how rows were matched

    `groups[i]` gives, for every row of run i's store, the matched item it belongs to (-1: none);
    `read` averages the rows of an item (one row per item for stimuli, matched by word; a corpus
    item is a word made of one or more tokens)."""

    settings: Mapping[str, Any]
    labels: Sequence[str]
    stores: Sequence["ActivationStore"]
    groups: Sequence["np.ndarray"]           # per run: (n_rows,) item index or -1
    n_items: int
    items: Sequence[str]                     # what each matched item is (a word)
    match_rule: str
    out_dir: Path
    attrs: Mapping[str, Any]
    steps: Sequence[int] | None = None      # the runs' training steps, when they are checkpoints of one model

    #: up to this many pairs, `pairs()` is every pair; beyond, each run against the reference
    ALL_PAIRS_UP_TO: ClassVar[int] = 6

    @property
    def n_runs(self) -> int:
        return len(self.stores)

    @property
    def reference(self) -> int:
        """The run every other is compared with in a large sweep: the last checkpoint by step,
        else the last run."""
        return max(range(self.n_runs), key=lambda run: self.steps[run]) if self.steps else self.n_runs - 1

    def pairs(self) -> list[tuple[int, int]]:
        """The pairs of runs (a < b) to compare: every pair when there are at most
        `ALL_PAIRS_UP_TO`, else each run with the reference, so that a sweep of many checkpoints
        costs linearly, not quadratically, in its runs."""
        every = [(a, b) for a in range(self.n_runs) for b in range(a + 1, self.n_runs)]
        if len(every) <= self.ALL_PAIRS_UP_TO:
            return every
        return [tuple(sorted((run, self.reference))) for run in range(self.n_runs) if run != self.reference]

    @property
    def model_attrs(self) -> list[Mapping[str, Any]]:
        return [store.model_attrs for store in self.stores]

    def read(self, run: int, site: str, layers: Sequence[int] | None = None) -> "np.ndarray":
        """(n_layers, n_items, width) float64: run `run`'s rows of `site`, averaged per item."""
        import numpy as np

        values = self.stores[run].read(site, layers)      # (n_layers, n_rows, width)
        groups = np.asarray(self.groups[run])
        kept = groups >= 0
        sums = np.zeros((values.shape[0], self.n_items, values.shape[2]))
        np.add.at(sums, (slice(None), groups[kept]), values[:, kept])
        counts = np.bincount(groups[kept], minlength=self.n_items)
        return sums / counts[None, :, None]


@dataclass(frozen=True)
class MeasureJob:
    """What `measure` gets: the metrics folder and the settings that made it.

        >>> table = read_tsv(job.metrics_dir / "norms.tsv")
        >>> return {"norm": Series(values, low=values - 1.96 * sem, high=values + 1.96 * sem,
        ...                        interval="95% normal interval (mean +- 1.96 SEM)")}
    """

    metrics_dir: Path
    settings: Mapping[str, Any]     # the experiment's analysis settings (as the metrics were made)


@dataclass(frozen=True)
class CompareJob:
    """What `compare` gets: one metrics folder per run of a sweep, in the sweep's order."""

    metrics_dirs: Sequence[Path]
    labels: Sequence[str]           # the sweep values that tell the runs apart
    settings: Sequence[Mapping[str, Any]]   # each run's analysis settings
    plot: Mapping[str, Any]         # the first run's `plot` keys


@dataclass(frozen=True)
class JobShape:
    """The size of an experiment's jobs, known from the config before any model loads."""

    n_layers: int
    d_model: int
    n_rows: int                     # stored rows: words (stimuli) or tokens (corpus)
    bytes_per_value: int            # of the stored activations (extract.storage_dtype)
    n_sites: int                    # the experiment's sites

    @property
    def stored_mb(self) -> float:
        """MiB of stored activations the analysis reads: layers x rows x width x sites."""
        return self.n_layers * self.n_rows * self.d_model * self.n_sites * self.bytes_per_value / 2**20
