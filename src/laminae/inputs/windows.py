"""A corpus cut into windows, on disk: built streaming from its documents, read back by window
range, so memory stays flat in the corpus's size and in the number of shards.

    >>> windows = TokenWindows.build(sources, tokenizer, window=1024, windowing=True, max_tokens=None)
    >>> windows.n_windows, windows.n_tokens         # windows, and tokens with special tokens (= rows)
    (977, 1000321)
    >>> part = windows.part(0, windows.n_windows)  # a shard: windows first:stop
    >>> part.sequences[0:8]                         # 8 lists of token ids (iter_batches reads slices)
    >>> part.rows.integers("position")              # (rows,) int64, computed on demand
    >>> for row in part.rows: ...                   # rows.tsv records, one at a time

Windowing policy (unchanged from the in-memory form, `laminae.inputs.corpus.corpus_windows`):
each document is tokenised whole without special tokens, cut into consecutive chunks of
`window - n_special` tokens (the last may be shorter), and each chunk is wrapped in the
tokenizer's special tokens. `max_tokens` stops after that many of the documents' tokens (the
last document cut there). Documents are tokenised in groups (TOKENISE_CHARS of text at most)
with the fast tokenizer's batch call, which encodes each text exactly as alone.

On disk, in a temporary folder (`tempfile`, so $TMPDIR: node-local scratch on most clusters),
removed when the object is closed or collected: `tokens.i32` (every window's ids, specials
included, int32), `offsets.i64` (n_windows + 1 starts), `documents.i64` (per window: file
index and record). About 4 bytes per token plus 24 per window.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from laminae.errors import ConfigError
from laminae.inputs.texts import Document, TextSources
from laminae.inputs.windowing import ROW_COLUMNS, special_tokens_around
from laminae.store import RowTable

log = logging.getLogger(__name__)
TOKENISE_CHARS = 1 << 20    # characters of text tokenised per batch call
TOKENISE_DOCS = 256         # documents per batch call


def _groups(documents: Iterable[Document]) -> Iterator[list[Document]]:
    """Consecutive documents in groups of at most TOKENISE_DOCS / TOKENISE_CHARS."""
    group: list[Document] = []
    chars = 0
    for document in documents:
        group.append(document)
        chars += len(document.text)
        if len(group) >= TOKENISE_DOCS or chars >= TOKENISE_CHARS:
            yield group
            group, chars = [], 0
    if group:
        yield group


class TokenWindows:
    """Every window of a corpus on disk (module docstring). Build with `TokenWindows.build`."""

    def __init__(self, folder: Path, sources: TextSources, tokenizer, owned: bool = True):
        self.folder = Path(folder)
        self.sources = sources
        self.tokenizer = tokenizer
        self.offsets = np.fromfile(self.folder / "offsets.i64", dtype=np.int64)
        self.n_windows = len(self.offsets) - 1
        self.n_tokens = int(self.offsets[-1])
        self.tokens = (np.memmap(self.folder / "tokens.i32", dtype=np.int32, mode="r", shape=(self.n_tokens,))
                       if self.n_tokens else np.zeros(0, dtype=np.int32))
        self.documents = np.fromfile(self.folder / "documents.i64", dtype=np.int64).reshape(-1, 2)
        self._texts: dict[int, str] = {}   # token id -> its text (at most the vocabulary)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True) if owned else None

    @classmethod
    def build(cls, sources: TextSources, tokenizer, window: int, windowing: bool = True,
              max_tokens: int | None = None, folder: Path | None = None) -> "TokenWindows":
        """Tokenise `sources`' documents into windows of at most `window` tokens, on disk."""
        prefix, suffix = special_tokens_around(tokenizer)
        room = window - len(prefix) - len(suffix)
        if room < 1:
            raise ConfigError("corpus.window_tokens",
                              f"more than the {len(prefix) + len(suffix)} special tokens the tokenizer adds", window)
        owned = folder is None
        folder = Path(tempfile.mkdtemp(prefix="laminae-windows-")) if folder is None else Path(folder)
        try:
            cls._write(folder, sources, tokenizer, prefix, suffix, room, windowing, max_tokens)
        except BaseException:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(folder, sources, tokenizer, owned=owned)

    @staticmethod
    def _write(folder: Path, sources: TextSources, tokenizer, prefix: list[int], suffix: list[int], room: int,
               windowing: bool, max_tokens: int | None) -> None:
        left = max_tokens if max_tokens is not None else -1
        start, n_windows = 0, 0
        with open(folder / "tokens.i32", "wb") as tokens, open(folder / "offsets.i64", "wb") as offsets, \
                open(folder / "documents.i64", "wb") as documents:
            offsets.write(np.zeros(1, dtype=np.int64).tobytes())
            for group in _groups(sources.documents()):
                encoded = tokenizer([d.text for d in group], add_special_tokens=False, verbose=False)["input_ids"]
                for document, ids in zip(group, encoded):
                    if left >= 0:
                        ids = ids[:left]
                        left -= len(ids)
                    if not ids:
                        continue
                    if len(ids) > room and not windowing:
                        name = sources.where(document.file, document.record)
                        raise ConfigError("corpus.windowing", f"true, since {name} has {len(ids)} tokens and one "
                                          f"window holds {room} (corpus.window_tokens, or the model's context when "
                                          "null, less special tokens)", False)
                    chunks = [prefix + ids[i : i + room] + suffix for i in range(0, len(ids), room)]
                    lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
                    tokens.write(np.fromiter((t for c in chunks for t in c), dtype=np.int32,
                                             count=int(lengths.sum())).tobytes())
                    offsets.write((start + np.cumsum(lengths)).tobytes())
                    documents.write(np.tile(np.array([document.file, document.record], dtype=np.int64),
                                            len(chunks)).tobytes())
                    start += int(lengths.sum())
                    n_windows += len(chunks)
                if left == 0:
                    break
        log.info("corpus: %d windows, %d tokens with special tokens%s", n_windows, start,
                 f" (corpus.max_tokens={max_tokens} reached)" if left == 0 else "")

    def close(self) -> None:
        """Remove the temporary folder (also done when the object is collected)."""
        if self._finalizer is not None:
            self.tokens = np.zeros(0, dtype=np.int32)
            self._finalizer()

    # ----------------------------------------------------------------------------- reading
    def ids(self, window: int) -> np.ndarray:
        """Window `window`'s token ids, specials included: (length,) int32 (a view on disk)."""
        return self.tokens[self.offsets[window] : self.offsets[window + 1]]

    def part(self, first: int, stop: int) -> "WindowRange":
        """Windows first:stop, as model inputs and rows."""
        if not 0 <= first <= stop <= self.n_windows:
            raise ValueError(f"windows {first}:{stop} outside 0:{self.n_windows}")
        return WindowRange(self, first, stop)

    def token_text(self, token_id: int) -> str:
        """rows.tsv's `token`: the token alone as text (memoised per id)."""
        text = self._texts.get(token_id)
        if text is None:
            token = self.tokenizer.convert_ids_to_tokens([token_id])[0]
            text = self._texts[token_id] = self.tokenizer.convert_tokens_to_string([token])
        return text

    def document_name(self, window: int) -> str:
        file, record = self.documents[window]
        return self.sources.name(int(file), int(record))


class _Windows(Sequence[list[int]]):
    """Token ids of windows first:stop, read from disk when sliced (iter_batches slices in order)."""

    def __init__(self, windows: TokenWindows, first: int, stop: int, positions: bool = False):
        self.windows, self.first, self.stop, self.positions = windows, first, stop, positions

    def __len__(self) -> int:
        return self.stop - self.first

    def _one(self, index: int) -> list[int]:
        ids = self.windows.ids(self.first + index)
        return list(range(len(ids))) if self.positions else ids.tolist()

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._one(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._one(index % len(self))


class WindowRange:
    """Windows first:stop of a TokenWindows: `sequences` (token ids), `keep` (every position),
    `rows` (a RowTable whose columns are computed on demand), `n_rows`, `first_row`."""

    def __init__(self, windows: TokenWindows, first: int, stop: int):
        self.windows, self.first, self.stop = windows, first, stop
        self.sequences: Sequence[list[int]] = _Windows(windows, first, stop)
        self.keep: Sequence[list[int]] = _Windows(windows, first, stop, positions=True)
        self.first_row = int(windows.offsets[first])
        self.n_rows = int(windows.offsets[stop]) - self.first_row
        self.rows = RowTable.lazy(self.n_rows, ROW_COLUMNS, self._column, self._records, source="rows of the corpus")

    def _lengths(self) -> np.ndarray:
        return np.diff(self.windows.offsets[self.first : self.stop + 1])

    def _column(self, name: str) -> Sequence[Any]:
        lengths = self._lengths()
        if name == "token_id":
            return np.asarray(self.windows.tokens[self.first_row : self.first_row + self.n_rows], dtype=np.int64)
        if name == "window":
            return np.repeat(np.arange(self.first, self.stop, dtype=np.int64), lengths)
        if name == "position":
            starts = np.repeat(self.windows.offsets[self.first : self.stop] - self.first_row, lengths)
            return np.arange(self.n_rows, dtype=np.int64) - starts
        if name == "document":
            return [self.windows.document_name(w) for w, n in zip(range(self.first, self.stop), lengths) for _ in range(n)]
        if name == "token":
            return [self.windows.token_text(int(t)) for t in self._column("token_id")]
        raise KeyError(name)

    def _records(self) -> Iterator[dict[str, Any]]:
        for window in range(self.first, self.stop):
            document = self.windows.document_name(window)
            for position, token_id in enumerate(self.windows.ids(window).tolist()):
                yield {"document": document, "window": window, "position": position, "token_id": token_id,
                       "token": self.windows.token_text(token_id)}
