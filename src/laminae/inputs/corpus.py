"""Corpus inputs: text files -> token windows that fit the model's context (one row per token).

Windowing policy: each document is tokenised once without special tokens; its tokens are cut
into consecutive, non-overlapping chunks of `window_tokens - n_special` tokens (the last chunk
may be shorter), and each chunk is wrapped with the tokenizer's special tokens (none for GPT-2,
[CLS] ... [SEP] for BERT, BOS for Llama). Every token of the corpus therefore appears in exactly
one window; a token at the start of a window sees no context from the previous window.

    >>> windows = corpus_windows([Path("data/corpora/nietzsche.txt")], gpt2_tokenizer(), 1024)
    >>> len(windows), len(windows[0].input_ids)
    (1, 346)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from laminae.errors import ConfigError
from laminae.inputs import ExtractionPlan

ROW_COLUMNS = ("document", "window", "position", "token_id", "token")
#: The config keys that determine a corpus extraction's activations (plus the files' content).
CONFIG_KEYS = ("corpus",)
SUFFIXES = (".txt",)
CHARS_PER_TOKEN = 4   # a generous estimate, for job sizes
DIGEST_LENGTH = 10


# ------------------------------------------------------------------------ the input kind
def content_digest(cfg: dict[str, Any], project_root: str | Path) -> str:
    """A hash of the documents' names (relative to the project root when inside it, so a moved
    project hashes the same) and bytes: editing a file reruns its extraction."""
    return file_digest(documents(cfg, project_root), Path(project_root).resolve())


def label(cfg: dict[str, Any]) -> str:
    return cfg["corpus"]["name"]


def describe(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"corpus": cfg["corpus"]["name"]}


def documents(cfg: dict[str, Any], project_root: str | Path) -> list[Path]:
    """The corpus files (see `corpus_documents`)."""
    return corpus_documents(cfg["corpus"]["path"], project_root)


def estimate(cfg: dict[str, Any], input_bytes: int = 0) -> tuple[int, int, int]:
    """(stored rows, input tokens, tokens per forward pass), for job sizes: one row per token
    of `input_bytes` of text at about CHARS_PER_TOKEN bytes each."""
    tokens = max(1, input_bytes // CHARS_PER_TOKEN)
    return tokens, tokens, min(tokens, cfg["batch_size"] * (cfg["corpus"]["window_tokens"] or 1024))


def plan(config: dict[str, Any], tokenizer, max_positions: int | None, project_root: Path) -> ExtractionPlan:
    """The windows and rows of an extraction stage's `config` (every token kept)."""
    window = window_length(config["corpus"]["window_tokens"], max_positions)
    windows = corpus_windows(corpus_documents(config["corpus"]["path"], project_root), tokenizer, window,
                             config["corpus"]["windowing"], project_root.resolve())
    return ExtractionPlan(sequences=[w.input_ids for w in windows], keep=[list(range(len(w.input_ids))) for w in windows],
                          average=False, rows=window_rows(windows, tokenizer), columns=ROW_COLUMNS)


def validate(cfg: dict[str, Any], project_root: str | Path) -> None:
    documents(cfg, project_root)


def corpus_documents(path: str | Path, project_root: str | Path = ".") -> list[Path]:
    """The documents of a corpus: the file itself, or the sorted .txt files of a folder.
    Relative paths are relative to `project_root`, and the documents are returned relative to
    the current folder when they lie inside it (Snakemake records its inputs as given, so a
    moved project must not see different paths).

    Raises ConfigError naming `corpus.path` when it is missing, empty or has no text."""
    resolved = Path(project_root, path) if not Path(path).is_absolute() else Path(path)
    if resolved.is_file():
        found = [resolved]
    elif resolved.is_dir():
        found = sorted(p for p in resolved.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not found:
            raise ConfigError("corpus.path", f"a folder holding {'/'.join(SUFFIXES)} files", str(path))
    else:
        raise ConfigError("corpus.path", "an existing text file or folder", str(path))
    for document in found:
        try:
            text = document.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError("corpus.path", f"UTF-8 text files ({document} is not)", str(path)) from None
        if not text.strip():
            raise ConfigError("corpus.path", f"non-empty text files ({document} is empty)", str(path))
    return [_relative_to_cwd(document) for document in found]


def _relative_to_cwd(path: Path) -> Path:
    here = Path.cwd().resolve()
    absolute = path.resolve()
    return Path(os.path.relpath(absolute, here)) if absolute.is_relative_to(here) else absolute


def file_digest(paths: Sequence[Path], root: Path) -> str:
    """Content hash of files (names relative to `root` when inside it, and bytes)."""
    sha = hashlib.sha256()
    for path in paths:
        absolute = path.resolve()
        name = absolute.relative_to(root) if absolute.is_relative_to(root) else absolute.name
        sha.update(str(name).encode() + b"\0" + hashlib.sha256(absolute.read_bytes()).digest())
    return sha.hexdigest()[:DIGEST_LENGTH]


# ------------------------------------------------------------------------------ windows


@dataclass(frozen=True)
class Window:
    """A model input: `input_ids` includes the special tokens; `document` is the file name."""

    document: str
    index: int              # window number across the whole corpus
    input_ids: list[int]


def window_length(window_tokens: int | None, max_positions: int | None) -> int:
    """The tokens per window: `corpus.window_tokens`, or the model's context when null."""
    if max_positions is None:  # the model's config does not say how long its context is
        if window_tokens is None:
            raise ConfigError("corpus.window_tokens", "a number of tokens per window (this model's config "
                                                      "declares no context length)", has_value=False)
        return window_tokens
    if window_tokens is None:
        return max_positions
    if window_tokens > max_positions:
        raise ConfigError("corpus.window_tokens", f"at most the model's context of {max_positions} tokens", window_tokens)
    return window_tokens


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (e.g. [CLS], [SEP])."""
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(content)] == content)
    return full[:start], full[start + len(content) :]


def corpus_windows(documents: Sequence[Path], tokenizer, window: int, windowing: bool = True,
                   root: Path | None = None) -> list[Window]:
    """Tokenise `documents` and cut them into windows of at most `window` tokens."""
    prefix, suffix = special_tokens_around(tokenizer)
    n_special = len(prefix) + len(suffix)
    room = window - n_special
    if room < 1:
        raise ConfigError("corpus.window_tokens", f"more than the {n_special} special tokens the tokenizer adds", window)
    windows: list[Window] = []
    for path in documents:
        inside = root is not None and path.resolve().is_relative_to(root)
        name = str(path.resolve().relative_to(root)) if inside else path.name
        text = path.read_text(encoding="utf-8").strip()  # a file's trailing newline is not content
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > room and not windowing:
            shown = name if inside else path
            raise ConfigError("corpus.windowing", f"true, since {shown} has {len(ids)} tokens and one window holds "
                                                  f"{room} (corpus.window_tokens, or the model's context when null, "
                                                  "less special tokens)", False)
        for start in range(0, len(ids), room):
            chunk = ids[start : start + room]
            windows.append(Window(name, len(windows), prefix + chunk + suffix))
    return windows


def window_rows(windows: Sequence[Window], tokenizer) -> list[dict[str, object]]:
    """rows.tsv content: one row per token of every window, in storage order."""
    rows = []
    for window in windows:
        tokens = tokenizer.convert_ids_to_tokens(window.input_ids)
        texts = [tokenizer.convert_tokens_to_string([token]) for token in tokens]
        for position, (token_id, text) in enumerate(zip(window.input_ids, texts)):
            rows.append({"document": window.document, "window": window.index, "position": position,
                         "token_id": token_id, "token": text})
    return rows
