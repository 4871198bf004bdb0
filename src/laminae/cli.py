"""The `laminae` command: results and configs from the shell (the Python API, laminae.api).

    laminae runs [FILTER=VALUE ...] [--results DIR] [--paths] [--tsv]   every run on disk, filtered
    laminae show RUN [--results DIR]                 a run's config, headline numbers, claims verdicts
    laminae where [OVERRIDES ...] [--sweep S ...]    where a config's outputs are or would be
    laminae report [OVERRIDES ...] [--sweep S ...]   the Snakemake report of a config's results
    laminae gc [--keep 'OVERRIDES [--sweep S]' ...] [--delete]   result folders no kept config needs
    laminae config [OVERRIDES ...] [--markdown]      every config key (python -m laminae.config)

    $ laminae runs experiment=qkv qkv.n_permutations=20
    $ laminae show af339e
    $ laminae where model=tiny-gpt2 qkv.selectivity=difference
    $ laminae report --sweep model=smollm2-135m,minilm-l6     # results/reports/sweep_model=....html
    $ laminae gc --keep '' --keep 'model=tiny-gpt2'           # lists; --delete removes

A filter is a column of `laminae runs` (run, model, revision, inputs, experiment, status, ...) or
any config key of a run (`qkv.n_permutations=20`); text values take shell wildcards
(`inputs='stimuli/*'`). Errors are one line, `laminae: ...`, and exit status 1, like the
pipeline's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from laminae.disk import size_text
from laminae.errors import LaminaeError

#: The columns `laminae runs` prints (`--paths` adds `path`).
RUNS_COLUMNS = ("run", "model", "inputs", "experiment", "settings", "status", "size", "date", "claims")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["config"]:   # its own options (--markdown, --root): laminae.config's parser
        return cmd_config(argv[1:])
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return 0
    try:
        return args.handler(args)
    except LaminaeError as error:
        print(f"laminae: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # `laminae runs | head`
        return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="laminae", description="Layer-by-layer analysis of transformer language "
                                  "models: results and configs (docs/API.md).")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")

    runs = commands.add_parser("runs", help="every run on disk, as a table", description="Every run found "
                               "under the results folder (one analysis each), newest first.")
    runs.add_argument("filters", nargs="*", metavar="KEY=VALUE", help="keep runs whose column or config key "
                      "has this value (e.g. experiment=qkv status=partial qkv.n_permutations=20)")
    runs.add_argument("--results", default="results", help="the results folder (default: results)")
    runs.add_argument("--paths", action="store_true", help="add each run's folder")
    runs.add_argument("--tsv", action="store_true", help="every column, tab-separated (for scripts)")
    runs.set_defaults(handler=cmd_runs)

    show = commands.add_parser("show", help="one run: config, headline numbers, claims verdicts")
    show.add_argument("run", help="a run id (a unique prefix of it) as `laminae runs` lists it, or a run's folder")
    show.add_argument("--results", default="results", help="the results folder (default: results)")
    show.add_argument("--full-config", action="store_true", help="print every stage's config.yaml whole")
    show.set_defaults(handler=cmd_show)

    where = commands.add_parser("where", help="where a config's outputs are or would be",
                                description="The output folder of every stage of the config these overrides "
                                "compose (as `snakemake --config overrides=[...]` would run it), and which exist. "
                                "Nothing runs.")
    config_arguments(where)
    where.add_argument("--missing", action="store_true", help="only the outputs that do not exist")
    where.set_defaults(handler=cmd_where)

    report = commands.add_parser("report", help="the Snakemake report of a config's results",
                                 description="Snakemake's report (one HTML page: every figure and claims table "
                                 "with its caption) of the outputs of the config these overrides compose, as far as "
                                 "they exist; written to results/reports/<config>.html unless --out says where.")
    config_arguments(report)
    report.add_argument("--out", default=None, help="where to write the report (.html, or .zip)")
    report.set_defaults(handler=cmd_report)

    gc = commands.add_parser("gc", help="result folders no kept config needs (--delete removes them)",
                             description="Every stage folder under the results folder that none of the kept "
                             "configs needs, with its size. Nothing is removed without --delete, and never while "
                             "a Snakemake run holds its lock on the working directory.")
    gc.add_argument("--keep", action="append", default=[], metavar="'OVERRIDES [--sweep KEY=A,B]'",
                    help="a config to keep, as laminae where takes it, quoted (repeatable; '' is the default "
                    "config; none given: the default config)")
    gc.add_argument("--delete", action="store_true", help="remove the listed folders")
    gc.add_argument("--project", default=None, help="the laminae checkout (default: here or above)")
    gc.add_argument("--workdir", "-d", default=".", help="where Snakemake runs (results_dir is relative to it)")
    gc.set_defaults(handler=cmd_gc)

    commands.add_parser("config", help="every config key: type, default, description (laminae config --help)",
                        add_help=False)
    return top


def config_arguments(command: argparse.ArgumentParser) -> None:
    """The arguments that name a config: overrides, sweep axes, the checkout, the working folder."""
    command.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-gpt2 qkv.zscore=true")
    command.add_argument("--sweep", action="append", default=[], metavar="KEY=A,B",
                         help="a sweep axis (repeatable), as in --config sweep=[...]")
    command.add_argument("--project", default=None, help="the laminae checkout (default: here or above)")
    command.add_argument("--workdir", "-d", default=".", help="where Snakemake runs (results_dir is relative to it)")


# ------------------------------------------------------------------------------ commands
def cmd_runs(args: argparse.Namespace) -> int:
    from laminae.api.results import results

    filters = dict(parse_filter(text) for text in args.filters)
    table = results(args.results, **filters)
    if args.tsv:
        sys.stdout.write(table.to_csv(sep="\t", index=False))
        return 0
    if table.empty:
        where = f" matching {' '.join(args.filters)}" if args.filters else ""
        print(f"no runs{where} in '{args.results}'")
        return 0
    shown = table[list(RUNS_COLUMNS) + (["path"] if args.paths else [])].copy()
    shown["size"] = shown["size"].map(size_text)
    shown["date"] = shown["date"].map(lambda d: "" if d is None or str(d) == "NaT" else d.strftime("%Y-%m-%d %H:%M"))
    print(shown.to_string(index=False))
    partial = int((table["status"] == "partial").sum())
    print(f"\n{len(table)} run(s) in '{args.results}'" + (f", {partial} partial" if partial else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import yaml

    from laminae.api.results import find_runs
    from laminae.api.run import load

    run = load(args.run, results=args.results)
    found = next((f for f in find_runs(run.extraction_dir.parents[2]) if f.path.resolve() == run.path.resolve()),
                 None)
    status = found.status if found is not None else ("complete" if run.complete else "partial")
    print(f"run {run.id}: {run.experiment or 'extraction only'} on {run.model} ({run.inputs}), {status}")
    print(f"  folder:      {run.path}")
    print(f"  activations: {run.activations_dir}")
    for name, folder in (("figures", run.figures_dir), ("claims", run.claims_dir)):
        print(f"  {name + ':':<12} {folder if folder is not None else '(none)'}")
    if found is not None:
        for problem in found.problems:
            print(f"  partial: {problem}")
        if found.settings_text:
            print(f"  differs in:  {found.settings_text}")
    print("\nconfig:")
    config = ({kind: record for kind, record in run.records.items() if record} if args.full_config
              else shown_config(run))
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)
    print("\n".join(f"  {line}" for line in text.rstrip().splitlines()))
    if run.experiment and run.records["analysis"]:
        print("\nheadline numbers (per layer):")
        print(indent(headline_text(run)))
    claims = run.claims_summary() if run.experiment else ""
    if claims:
        print("\nclaims:")
        print(indent(claims.rstrip()))
    elif run.experiment:
        print("\nclaims: none judged")
    return 0


def cmd_where(args: argparse.Namespace) -> int:
    from laminae.api.plan import describe, plan

    planned = plan(args.overrides, args.sweep, project=args.project, workdir=args.workdir)
    outputs = planned.missing if args.missing else planned.outputs
    for label in dict.fromkeys(output.run for output in outputs):
        print(f"run: {label}")
        print(indent(describe([output for output in outputs if output.run == label])))
    done = sum(output.exists for output in planned.outputs)
    print(f"\n{done} of {len(planned.outputs)} outputs exist"
          + ("; snakemake with the same --config (or laminae.plan(...).run()) makes the rest"
             if done < len(planned.outputs) else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from laminae.api.plan import plan

    planned = plan(args.overrides, args.sweep, project=args.project, workdir=args.workdir)
    done = sum(output.exists for output in planned.outputs)
    if done == 0:
        raise LaminaeError("nothing to report: none of this config's outputs exist yet "
                           "(run it first: snakemake with the same --config, or make run)")
    path = planned.report(args.out)
    print(f"report: {path} ({done} of {len(planned.outputs)} outputs of the config exist)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    import shlex

    from laminae.api.gc import remove, unused
    from laminae.api.plan import plan

    keep_parser = argparse.ArgumentParser(prog="laminae gc --keep", add_help=False)
    keep_parser.add_argument("overrides", nargs="*")
    keep_parser.add_argument("--sweep", action="append", default=[])
    kept = []
    for text in args.keep or [""]:
        parsed, unknown = keep_parser.parse_known_args(shlex.split(text))
        if unknown:
            raise LaminaeError(f"--keep {text!r}: expected overrides and --sweep KEY=A,B, got {' '.join(unknown)}")
        kept.append(plan(parsed.overrides, parsed.sweep, project=args.project, workdir=args.workdir))
    found = unused(kept)
    if not found:
        print("every result folder is needed by a kept config")
        return 0
    for item in found:
        print(f"{size_text(item.size):>9}  {item.stage:<18} {item.path}")
    total = size_text(sum(item.size for item in found))
    if not args.delete:
        print(f"\n{len(found)} folder(s) no kept config needs, {total}; laminae gc --delete (same --keep) removes them")
        return 0
    freed = remove(found, args.workdir)
    print(f"\nremoved {len(found)} folder(s), {size_text(freed)}")
    return 0


def cmd_config(argv: list[str]) -> int:
    """`python -m laminae.config`, with `--root` the checkout found from here (laminae.api.plan.
    find_project) unless given."""
    from laminae.config.__main__ import main as config_main

    if not any(arg == "--root" or arg.startswith("--root=") for arg in argv) and not {"-h", "--help"} & set(argv):
        from laminae.api.plan import find_project

        try:
            argv = [*argv, "--root", str(find_project())]
        except LaminaeError as error:
            print(f"laminae: {error}", file=sys.stderr)
            return 1
    return config_main(argv)


# ------------------------------------------------------------------------------ helpers
def parse_filter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise LaminaeError(f"filter {text!r}: expected KEY=VALUE, e.g. experiment=qkv or qkv.n_permutations=20")
    return key, value


def shown_config(run) -> dict:
    """The run's config without the long lists: the inputs' word lists and the claims counted."""
    config = dict(run.config)
    if isinstance(config.get("stimuli"), dict) and isinstance(config["stimuli"].get("categories"), dict):
        stimuli = dict(config["stimuli"])
        stimuli["categories"] = {name: f"{len(words)} words" for name, words in stimuli["categories"].items()}
        config["stimuli"] = stimuli
    group = config.get(run.experiment)
    if isinstance(group, dict) and isinstance(group.get("claims"), list):
        config[run.experiment] = {**group, "claims": f"{len(group['claims'])} claims (below)"}
    config.pop("references", None)
    return config


def headline_text(run) -> str:
    """Each per-layer measure: its first, middle and last layer, its smallest and largest value."""
    try:
        table = run.headline()
    except LaminaeError as error:
        return f"(not available: {error})"
    if table.empty:
        return "(the experiment declares no per-layer measurements)"
    n = len(table)
    picks = {"first": 0, "middle": (n - 1) // 2, "last": n - 1}
    labels = table.attrs.get("labels", {})
    rows = []
    for name in table.columns:
        values = table[name]
        cells = [f"{label} {values.iloc[i]:.3g}" for label, i in picks.items()]
        label = f"{name} ({labels[name]})" if labels.get(name) and labels[name] != name else name
        rows.append((label, ", ".join(cells) + f"; min {values.min():.3g}, max {values.max():.3g}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in rows)


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
