"""A corpus's documents, read streaming: never a whole corpus in memory, one document at a time.

Three kinds of file, chosen by suffix (a folder holds any mix of them, read in sorted order):

- `.txt`: one document per file (read whole: split a huge text into a folder of files);
- `.jsonl`: one document per line, its text under `corpus.text_field` (blank lines skipped);
- `.parquet`: one document per row, its text in the column `corpus.text_column` (read in
  record batches of BATCH_ROWS rows; needs pyarrow).

Every text is stripped of leading and trailing whitespace; a record left empty is skipped (an
empty .txt file is an error, as before). Documents are named by their file (relative to the
project root when inside it) and, for records, `:<line>` (.jsonl, from 1, as editors count) or
`:<row>` (.parquet, from 0, as pyarrow and pandas count):

    >>> sources = TextSources(files, text_field="text", text_column="text", root=Path("."))
    >>> sources.check()                        # cheap, before any job: files, first record, schema
    >>> for doc in sources.documents():        # Document(file=0, record=17, text="...")
    ...     sources.name(doc.file, doc.record)  # 'data/corpora/web.jsonl:18'

Bad input fails in one line naming the key and the file: a missing field or column, a value
that is not text, a line that is not JSON, an unreadable or non-UTF-8 file.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from laminae.errors import ConfigError

SUFFIXES = (".txt", ".jsonl", ".parquet")
BATCH_ROWS = 1024          # Parquet rows per record batch
READ_BYTES = 1 << 20       # block size of the streamed UTF-8 check


@dataclass(frozen=True)
class Document:
    """One document: `file` indexes the corpus's files, `record` is its line (.jsonl, from 1) or
    row (.parquet, from 0) in that file (0 for a .txt file)."""

    file: int
    record: int
    text: str


class TextSources:
    """The documents of a list of corpus files (see module docstring)."""

    def __init__(self, files: Sequence[Path], text_field: str = "text", text_column: str = "text",
                 root: Path | None = None, configured: str | None = None):
        self.configured = configured  # corpus.path as configured: the value its errors show
        self.files = [Path(f) for f in files]
        self.text_field, self.text_column = text_field, text_column
        self.root = root.resolve() if root is not None else None
        self.names = [self._file_name(path) for path in self.files]

    def _file_name(self, path: Path) -> str:
        absolute = path.resolve()
        if self.root is not None and absolute.is_relative_to(self.root):
            return str(absolute.relative_to(self.root))
        return path.name

    def _shown(self, path: Path) -> str:
        return self.configured if self.configured is not None else str(path)

    def where(self, file: int, record: int) -> str:
        """A document as error messages show it: like `name`, but the full path of a file
        outside the project."""
        path = self.files[file]
        inside = self.root is not None and path.resolve().is_relative_to(self.root)
        shown = self.names[file] if inside else str(path)
        return shown if path.suffix == ".txt" else f"{shown}:{record}"

    def name(self, file: int, record: int) -> str:
        """The `document` of rows.tsv: the file's name, plus `:<record>` for .jsonl and .parquet."""
        return self.names[file] if self.files[file].suffix == ".txt" else f"{self.names[file]}:{record}"

    # -------------------------------------------------------------------------- cheap checks
    def check(self) -> None:
        """Before any job: every file readable; .txt UTF-8 and not blank (streamed in blocks);
        .jsonl's first record holds `text_field` as text; .parquet's schema has `text_column`
        as a string column. The other records are checked as they are read."""
        for path in self.files:
            if path.suffix == ".txt":
                _check_text_file(path, self._shown(path))
            elif path.suffix == ".jsonl":
                for _ in self._jsonl(path, first_only=True):
                    break
            else:
                self._parquet_column(path)

    # ---------------------------------------------------------------------------- streaming
    def documents(self) -> Iterator[Document]:
        """Every non-empty document, in file order then record order."""
        for index, path in enumerate(self.files):
            if path.suffix == ".txt":
                yield Document(index, 0, _read_text(path, self._shown(path)).strip())
            elif path.suffix == ".jsonl":
                for record, text in self._jsonl(path):
                    yield Document(index, record, text)
            else:
                for record, text in self._parquet(path):
                    yield Document(index, record, text)

    def _jsonl(self, path: Path, first_only: bool = False) -> Iterator[tuple[int, str]]:
        key = "corpus.text_field"
        try:
            handle = open(path, encoding="utf-8")
        except OSError as error:
            raise ConfigError("corpus.path", f"readable files ({path}: {error.strerror})", self._shown(path)) from None
        with handle:
            line_number, records = 0, 0
            try:
                for line_number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    records += 1
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        raise ConfigError("corpus.path", f"JSON Lines: one JSON object per line ({path} line "
                                                         f"{line_number} is not JSON)", self._shown(path)) from None
                    if not isinstance(record, dict) or self.text_field not in record:
                        raise ConfigError(key, f"a field of every record of {path} (line {line_number} has no "
                                               f"{self.text_field!r})", self.text_field)
                    text = record[self.text_field]
                    if not isinstance(text, str):
                        raise ConfigError(key, f"a field holding text in every record of {path} (line "
                                               f"{line_number} holds {type(text).__name__} {_short(text)})",
                                          self.text_field)
                    text = text.strip()
                    if text:
                        yield line_number, text
                    if first_only:
                        return
            except UnicodeDecodeError:
                raise ConfigError("corpus.path", f"UTF-8 text files ({path} is not, after line {line_number})",
                                  self._shown(path)) from None
        if first_only and records == 0:
            raise ConfigError("corpus.path", f"non-empty files ({path} has no record)", self._shown(path))

    def _parquet_column(self, path: Path):
        """The open ParquetFile, after checking that `text_column` is a string column."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("corpus.path", f"a .txt or .jsonl corpus, or pyarrow installed to read {path} "
                                             "(pip install pyarrow)", self._shown(path)) from None
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise ConfigError("corpus.path", f"readable Parquet files ({path}: {str(error).splitlines()[0]})",
                              self._shown(path)) from None
        schema = parquet.schema_arrow
        if self.text_column not in schema.names:
            raise ConfigError("corpus.text_column", f"a column of {path} (its columns: {', '.join(schema.names)})",
                              self.text_column)
        kind = schema.field(self.text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise ConfigError("corpus.text_column", f"a column of text in {path} (it holds {kind})", self.text_column)
        return parquet

    def _parquet(self, path: Path) -> Iterator[tuple[int, str]]:
        parquet = self._parquet_column(path)
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[self.text_column]):
            for text in batch.column(0).to_pylist():
                if text is None:
                    raise ConfigError("corpus.text_column", f"text in every row of {path} (row {row} is null)",
                                      self.text_column)
                text = text.strip()
                if text:
                    yield row, text
                row += 1


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("corpus.path", f"UTF-8 text files ({path} is not)", shown) from None
    except OSError as error:
        raise ConfigError("corpus.path", f"readable files ({path}: {error.strerror})", shown) from None


def _check_text_file(path: Path, shown: str) -> None:
    """UTF-8 and not blank, read in READ_BYTES blocks (memory flat in the file's size)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    content = False
    try:
        with open(path, "rb") as handle:
            while block := handle.read(READ_BYTES):
                text = decoder.decode(block)
                content = content or bool(text.strip())
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ConfigError("corpus.path", f"UTF-8 text files ({path} is not)", shown) from None
    except OSError as error:
        raise ConfigError("corpus.path", f"readable files ({path}: {error.strerror})", shown) from None
    if not content:
        raise ConfigError("corpus.path", f"non-empty text files ({path} is empty)", shown)
