"""`python -m laminae.config [overrides...] [--markdown] [--root DIR]`: every config key with its
type, default and description (laminae.config.reference), for the default config or the one
`overrides` compose (e.g. `experiment_packages=[examples]` adds that experiment's keys).
`--markdown` prints docs/CONFIG.md's form. A bad override ends with one `laminae: ...` line."""

from __future__ import annotations

import argparse
import sys

from laminae.config.reference import key_reference, render_markdown, render_text
from laminae.errors import LaminaeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m laminae.config",
                                     description="Every config key: its type, default (conf/) and description.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-gpt2 experiment_packages=[examples]")
    parser.add_argument("--markdown", action="store_true", help="print the Markdown of docs/CONFIG.md")
    parser.add_argument("--root", default=".", help="the project root (its conf/ is composed); default: .")
    args = parser.parse_args(argv)
    try:
        if args.markdown:
            sys.stdout.write(render_markdown(args.root, overrides=args.overrides))
        else:
            sys.stdout.write(render_text(key_reference(args.root, overrides=args.overrides)))
    except LaminaeError as error:
        print(f"laminae: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
