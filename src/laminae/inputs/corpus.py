"""Corpus inputs: text files -> token windows that fit the model's context (one row per token).

Documents come from `.txt` files (one each), `.jsonl` files (one per line, text under
`corpus.text_field`) and Parquet files (one per row, text in `corpus.text_column`), a file or a
folder of them, read streaming (`laminae.inputs.texts`); `corpus.max_tokens` caps a run.

Windowing policy: each document is tokenised once without special tokens; its tokens are cut
into consecutive, non-overlapping chunks of `window_tokens - n_special` tokens (the last chunk
may be shorter), and each chunk is wrapped with the tokenizer's special tokens (none for GPT-2,
[CLS] ... [SEP] for BERT, BOS for Llama). Every token of the corpus therefore appears in exactly
one window; a token at the start of a window sees no context from the previous window. The
windows are written to disk as they are made (`laminae.inputs.windows`), so planning holds
neither every window's ids nor every row in memory.

`corpus.shards=N` splits the windows into N extraction jobs, cut at multiples of `batch_size`
windows so that every shard forwards exactly the batches of an unsharded run (laminae.shards):

    >>> plan(stage_config, tokenizer, 1024, root, shard=Shard(1, 4, batch_size=8)).first_row
    8192

The in-memory form, for small corpora and as the tests' reference:

    >>> windows = corpus_windows([Path("data/corpora/nietzsche.txt")], gpt2_tokenizer(), 1024)
    >>> len(windows), len(windows[0].input_ids)
    (1, 346)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from laminae.errors import ConfigError
from laminae.inputs import ExtractionPlan
from laminae.shards import Shard
from laminae.inputs.texts import SUFFIXES, TextSources
from laminae.inputs.windowing import ROW_COLUMNS, special_tokens_around

#: The config keys that determine a corpus extraction's activations (plus the files' content);
#: `hashed` drops those that do not (corpus.shards) or cannot (a text_field without .jsonl).
CONFIG_KEYS = ("corpus",)
#: corpus keys that change how the extraction runs, never a stored value (laminae.config.stages)
RUNTIME_KEYS = ("shards",)
CHARS_PER_TOKEN = 4   # a generous estimate, for job sizes
DIGEST_LENGTH = 10


# ------------------------------------------------------------------------ the input kind
def content_digest(cfg: dict[str, Any], project_root: str | Path) -> str:
    """A hash of the documents' names (relative to the project root when inside it, so a moved
    project hashes the same) and bytes: editing a file reruns its extraction. Within
    `listing_once`, each set of documents is read once."""
    paths, root = documents(cfg, project_root), Path(project_root).resolve()
    if _DIGESTS is None:
        return file_digest(paths, root)
    key = (tuple(paths), root, os.getcwd())
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(paths, root)
    return _DIGESTS[key]


def label(cfg: dict[str, Any]) -> str:
    return cfg["corpus"]["name"]


def describe(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"corpus": cfg["corpus"]["name"]}


def documents(cfg: dict[str, Any], project_root: str | Path) -> list[Path]:
    """The corpus files (see `corpus_documents`)."""
    return corpus_documents(cfg["corpus"]["path"], project_root)


def estimate(cfg: dict[str, Any], input_bytes: int = 0) -> tuple[int, int, int]:
    """(stored rows, input tokens, tokens per forward pass), for job sizes: one row per token
    of `input_bytes` of text at about CHARS_PER_TOKEN bytes each, at most `corpus.max_tokens`."""
    tokens = max(1, input_bytes // CHARS_PER_TOKEN)
    if cfg["corpus"].get("max_tokens"):
        tokens = min(tokens, cfg["corpus"]["max_tokens"])
    return tokens, tokens, min(tokens, cfg["batch_size"] * (cfg["corpus"]["window_tokens"] or 1024))


def hashed(corpus: dict[str, Any], cfg: dict[str, Any], project_root: str | Path) -> dict[str, Any]:
    """The corpus keys an extraction hashes: all but the runtime ones (`shards`), and
    `text_field` / `text_column` / `max_tokens` only where they matter (a .jsonl / .parquet
    file, a cap), so a .txt corpus hashes as it did before they existed."""
    suffixes = {path.suffix for path in documents(cfg, project_root)}
    out = {key: value for key, value in corpus.items() if key not in RUNTIME_KEYS}
    for key, suffix in (("text_field", ".jsonl"), ("text_column", ".parquet")):
        if suffix not in suffixes:
            out.pop(key, None)
    if out.get("max_tokens", 0) is None:
        out.pop("max_tokens")
    return out


def sources(config: dict[str, Any], project_root: str | Path) -> TextSources:
    """The documents of `config["corpus"]` (a run's or a stage's config)."""
    corpus = config["corpus"]
    return TextSources(corpus_documents(corpus["path"], project_root), text_field=corpus.get("text_field", "text"),
                       text_column=corpus.get("text_column", "text"), root=Path(project_root).resolve(),
                       configured=str(corpus["path"]))


def plan(config: dict[str, Any], tokenizer, max_positions: int | None, project_root: Path,
         shard: Shard | None = None) -> ExtractionPlan:
    """The windows and rows of an extraction stage's `config` (every token kept), or of one
    shard of them. The windows are tokenised to a temporary folder, read back batch by batch."""
    import numpy as np

    from laminae.inputs.windows import TokenWindows   # numpy: not when the workflow's DAG is built
    from laminae.shards import shard_windows

    corpus = config["corpus"]
    window = window_length(corpus["window_tokens"], max_positions)
    windows = TokenWindows.build(sources(config, project_root), tokenizer, window, corpus["windowing"],
                                 corpus.get("max_tokens"))
    if windows.n_windows == 0:
        raise ConfigError("corpus.path", "documents holding text (every record is empty)", str(corpus["path"]))
    first, stop = (0, windows.n_windows) if shard is None else shard_windows(windows.n_windows, shard)
    if first == stop and shard is not None:
        batches = -(-windows.n_windows // shard.batch_size)
        raise ConfigError("corpus.shards", f"at most {batches}: this corpus's {windows.n_windows} windows make "
                                           f"{batches} batches of batch_size={shard.batch_size}", shard.count)
    part = windows.part(first, stop)
    return ExtractionPlan(sequences=part.sequences, keep=part.keep, average=False, rows=part.rows,
                          columns=ROW_COLUMNS, first_row=part.first_row,
                          max_length=int(np.diff(windows.offsets).max()))


def validate(cfg: dict[str, Any], project_root: str | Path) -> None:
    """Files present and readable; .txt UTF-8 and not blank; a .jsonl's first record holds the
    text field; a Parquet file has the text column (the rest is checked as it is read, in the
    extraction job before the model loads)."""
    sources(cfg, project_root).check()


_LISTED: dict[tuple[str, str, str], list[Path]] | None = None   # set while `listing_once` holds
_DIGESTS: dict[tuple[tuple[Path, ...], Path, str], str] | None = None   # likewise: `content_digest`s


@contextlib.contextmanager
def listing_once() -> Iterator[None]:
    """Within the block, each corpus folder is listed, and its documents hashed, once (a sweep
    plans many runs of one corpus: `laminae.config.load_runs`); outside it, on every call."""
    global _LISTED, _DIGESTS
    outer = _LISTED, _DIGESTS
    _LISTED = {} if _LISTED is None else _LISTED
    _DIGESTS = {} if _DIGESTS is None else _DIGESTS
    try:
        yield
    finally:
        _LISTED, _DIGESTS = outer


def corpus_documents(path: str | Path, project_root: str | Path = ".") -> list[Path]:
    """The documents of a corpus: the file itself, or the sorted .txt files of a folder.
    Relative paths are relative to `project_root`, and the documents are returned relative to
    the current folder when they lie inside it (Snakemake records its inputs as given, so a
    moved project must not see different paths).

    Raises ConfigError naming `corpus.path` when it is missing or holds no corpus file (a file
    of another suffix than SUFFIXES is read as text). Their content is checked by `validate`."""
    key = (str(path), str(project_root), os.getcwd())
    if _LISTED is not None and key in _LISTED:
        return list(_LISTED[key])
    resolved = Path(project_root, path) if not Path(path).is_absolute() else Path(path)
    if resolved.is_file():
        found = [resolved]
    elif resolved.is_dir():
        found = sorted(p for p in resolved.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not found:
            raise ConfigError("corpus.path", f"a folder holding {'/'.join(SUFFIXES)} files", str(path))
    else:
        raise ConfigError("corpus.path", "an existing text file or folder", str(path))
    documents = [_relative_to_cwd(document) for document in found]
    if _LISTED is not None:
        _LISTED[key] = documents
    return list(documents)


def _relative_to_cwd(path: Path) -> Path:
    here = Path.cwd().resolve()
    absolute = path.resolve()
    return Path(os.path.relpath(absolute, here)) if absolute.is_relative_to(here) else absolute


def file_digest(paths: Sequence[Path], root: Path) -> str:
    """Content hash of files (names relative to `root` when inside it, and bytes, streamed)."""
    sha = hashlib.sha256()
    for path in paths:
        absolute = path.resolve()
        name = absolute.relative_to(root) if absolute.is_relative_to(root) else absolute.name
        sha.update(str(name).encode() + b"\0" + _file_sha256(absolute))
    return sha.hexdigest()[:DIGEST_LENGTH]


def _file_sha256(path: Path, block: int = 1 << 20) -> bytes:
    """sha256 of a file's bytes, read in blocks (memory flat in the file's size)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            sha.update(data)
    return sha.digest()


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
