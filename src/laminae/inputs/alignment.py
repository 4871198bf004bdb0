"""Token <-> text alignment: where each stored corpus row lies in its document's text, and which
word (or spaCy token, or any other unit with character spans) it belongs to.

    >>> spans = token_spans(rows, documents, tokenizer)   # (n_rows, 2) int64 [start, end) chars; -1 special
    >>> word = words_of(spans[doc_rows], documents[name])  # (n,) index into word_spans(text); -1: none
    >>> unit = units_of(spans[doc_rows], unit_spans)       # any sorted, disjoint (n_units, 2) spans

`rows`: rows.tsv of a corpus extraction (`document`, `window`, `position`, `token_id`, ...; a
`laminae.store.RowTable` or a sequence of mappings), in storage order; `documents`: document
name (rows.tsv's `document`) -> its text exactly as the extraction tokenised it
(`document_texts`). The windows of a document are consecutive chunks of its tokens, so the rows
of one document, special tokens left out, spell the document from its start.

How a token's text is found, independently of the tokenizer's own `return_offsets_mapping` (the
tests compare the two): each token id becomes the bytes it stands for,

- byte-level BPE (GPT-2, Llama 3, SmolLM2: decoder `ByteLevel`): the token's characters mapped
  back through GPT-2's bytes<->unicode table, so a token may hold part of a UTF-8 character;
- WordPiece (BERT): the token without its `##` prefix, matched against the document as the
  tokenizer's normaliser sees it (lower-cased, accents stripped for uncased BERT), character by
  character, so spans index the original text;
- SentencePiece-style (`▁` for a space, `<0xNN>` byte fallback): `▁` -> space, byte tokens -> the byte;

and these bytes are matched against the document's UTF-8 bytes from a cursor that moves
forward: exactly at the cursor, else after skipping whitespace (WordPiece drops spaces, a
SentencePiece tokenizer may add one at the start), else at the next occurrence within
`SEARCH_BYTES`. The span is the characters the matched bytes touch, without surrounding
whitespace (a token of whitespace only keeps its whitespace). Special tokens ([CLS], BOS, ...)
get (-1, -1); an unknown token ([UNK]) gets the non-space text between its neighbours' spans.
A token that cannot be found (an unusual normaliser) gets (-1, -1) and the cursor stays, so
one failure does not shift the rest; `TokenSpans.unmatched` counts them.

Words (`word_spans`): maximal runs of word characters (`\\w+`), and every other non-space
character alone (punctuation), so "don't" is three words: don ' t. A row belongs to the word its
span overlaps most (the first on a tie); -1 when it overlaps none (special, whitespace).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: how far ahead (bytes) a token that does not match at the cursor is looked for
SEARCH_BYTES = 256
WORD = re.compile(r"\w+|[^\w\s]")
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenSpans(np.ndarray):
    """(n_rows, 2) int64 spans with `unmatched`: how many non-special rows were not found."""

    unmatched: int = 0


# ----------------------------------------------------------------------------- tokenizer kinds
@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def tokenizer_kind(tokenizer: Any) -> str:
    """"byte_level", "wordpiece" or "metaspace" (SentencePiece-style), from the backend's
    decoder and model; a tokenizer without a backend is taken as byte-level when its vocabulary
    uses GPT-2's 'Ġ' for a space, else as SentencePiece-style."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        text = json.dumps(spec.get("decoder")) + json.dumps(spec.get("pre_tokenizer"))
        if spec.get("model", {}).get("type") == "WordPiece" or '"WordPiece"' in text:
            return "wordpiece"
        if '"ByteLevel"' in text:
            return "byte_level"
        return "metaspace"
    vocab = tokenizer.get_vocab()
    return "byte_level" if any(token.startswith("Ġ") for token in list(vocab)[:5000]) else "metaspace"


def _normaliser(tokenizer: Any, kind: str):
    """Per character: how the tokenizer's normaliser rewrites it (WordPiece only; identity else)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None) if kind == "wordpiece" else None
    if normalizer is None:
        return None
    cache: dict[str, str] = {}

    def normalise(char: str) -> str:
        if char not in cache:
            out = normalizer.normalize_str(char)
            # a character the normaliser drops but that is not whitespace (control chars) stays as itself
            cache[char] = out if out or char.isspace() else ""
        return cache[char]
    return normalise


def token_bytes(tokenizer: Any, token_ids: Sequence[int], kind: str | None = None) -> list[bytes | None]:
    """What each token id stands for as UTF-8 bytes; None for a special token (unknown included).

        >>> token_bytes(gpt2_tokenizer(), [15496, 995])
        [b'Hello', b' world']
    """
    kind = kind or tokenizer_kind(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])
    table = _unicode_to_byte()
    out: list[bytes | None] = []
    for token_id, piece in zip(token_ids, pieces):
        if int(token_id) in special or piece is None:
            out.append(None)
        elif kind == "byte_level":
            out.append(bytes(table.get(char, 0x3F) for char in piece))
        elif kind == "wordpiece":
            out.append((piece[2:] if piece.startswith("##") else piece).encode("utf-8"))
        else:
            byte = _BYTE_TOKEN.match(piece)
            out.append(bytes([int(byte.group(1), 16)]) if byte else piece.replace("▁", " ").encode("utf-8"))
    return out


# ----------------------------------------------------------------------------- spans
class _Document:
    """A document's text as the tokenizer sees it, in UTF-8 bytes, with byte -> character maps."""

    def __init__(self, text: str, normalise=None):
        parts, owner = [], []
        for index, char in enumerate(text):
            piece = (normalise(char) if normalise else char).encode("utf-8")
            parts.append(piece)
            owner.extend([index] * len(piece))
        self.data = b"".join(parts)
        self.owner = np.asarray(owner, dtype=np.int64)   # (n_bytes,) the character each byte comes from
        self.cursor = 0

    def _skip_space(self, at: int) -> int:
        while at < len(self.data) and self.data[at : at + 1].isspace():
            at += 1
        return at

    def match(self, piece: bytes) -> tuple[int, int] | None:
        """The byte range [start, end) that `piece` matches from the cursor (cursor moved), or None."""
        at = self.cursor
        stripped = piece.lstrip()
        if piece and self.data.startswith(piece, at):
            start = at
        elif stripped and self.data.startswith(stripped, self._skip_space(at)):
            start = self._skip_space(at)
            piece = stripped
        elif stripped:
            found = self.data.find(stripped, at, at + SEARCH_BYTES + len(stripped))
            if found < 0:
                return None
            start, piece = found, stripped
        else:   # whitespace the document lacks (a SentencePiece prefix space at the very start)
            return None
        self.cursor = start + len(piece)
        return start, self.cursor

    def char_span(self, start: int, end: int, trim: bool = True) -> tuple[int, int]:
        """Characters touched by bytes [start, end), whitespace trimmed unless it is all there is."""
        if trim:
            left, right = start, end
            while left < right and self.data[left : left + 1].isspace():
                left += 1
            while right > left and self.data[right - 1 : right].isspace():
                right -= 1
            if left < right:
                start, end = left, right
        return int(self.owner[start]), int(self.owner[end - 1]) + 1


def token_spans(rows: Iterable[Mapping[str, Any]], documents: Mapping[str, str], tokenizer: Any) -> TokenSpans:
    """Per row, [start, end) characters of its token in `documents[row["document"]]`:
    (n_rows, 2) int64, (-1, -1) for special tokens (module docstring). Rows must be in storage
    order (a document's windows in order)."""
    kind = tokenizer_kind(tokenizer)
    normalise = _normaliser(tokenizer, kind)
    rows = list(rows)
    ids = [int(row["token_id"]) for row in rows]
    pieces = token_bytes(tokenizer, ids, kind)
    unk = getattr(tokenizer, "unk_token_id", None)
    spans = np.full((len(rows), 2), -1, dtype=np.int64)
    opened: dict[str, _Document] = {}
    unknown: list[int] = []
    unmatched = 0
    for index, (row, piece) in enumerate(zip(rows, pieces)):
        name = str(row["document"])
        if name not in opened:
            if name not in documents:
                raise KeyError(f"rows name document {name!r}, which `documents` lacks")
            opened[name] = _Document(documents[name], normalise)
        document = opened[name]
        if piece is None:
            if unk is not None and ids[index] == unk:
                unknown.append(index)
                spans[index] = document.cursor, -2     # end filled in below, from the next span
            continue
        matched = document.match(piece)
        if matched is None:
            unmatched += 1
            continue
        spans[index] = document.char_span(*matched)
        if document.data[matched[0] : matched[1]].isspace():
            spans[index] = document.char_span(*matched, trim=False)
    for index in unknown:   # [UNK]: the non-space text between the previous match and the next span
        document = opened[str(rows[index]["document"])]
        start_byte = int(spans[index, 0])
        following = [j for j in range(index + 1, len(rows)) if rows[j]["document"] == rows[index]["document"]
                     and spans[j, 0] >= 0 and spans[j, 1] >= 0][:1]
        stop_char = int(spans[following[0], 0]) if following else len(documents[str(rows[index]["document"])])
        start_char = int(document.owner[start_byte]) if start_byte < len(document.owner) else stop_char
        text = documents[str(rows[index]["document"])]
        while start_char < stop_char and text[start_char].isspace():
            start_char += 1
        end_char = stop_char
        while end_char > start_char and text[end_char - 1].isspace():
            end_char -= 1
        spans[index] = (start_char, end_char) if end_char > start_char else (-1, -1)
    out = spans.view(TokenSpans)
    out.unmatched = unmatched
    return out


# ----------------------------------------------------------------------------- units
def word_spans(text: str) -> np.ndarray:
    """The words of `text` (module docstring): (n_words, 2) int64 [start, end) characters."""
    return np.array([m.span() for m in WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)


def units_of(spans: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Per span (n, 2), the index of the unit (sorted, disjoint (n_units, 2) spans) it overlaps
    most, the first on a tie; -1 for no overlap or a span with start < 0. (n,) int64."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 2)
    out = np.full(len(spans), -1, dtype=np.int64)
    if not len(units):
        return out
    first = np.searchsorted(units[:, 1], spans[:, 0], side="right")   # first unit ending after the start
    for index, ((start, end), j) in enumerate(zip(spans.tolist(), first.tolist())):
        if start < 0 or end <= start:
            continue
        best, best_overlap = -1, 0
        while j < len(units) and units[j, 0] < end:
            overlap = min(end, units[j, 1]) - max(start, units[j, 0])
            if overlap > best_overlap:
                best, best_overlap = j, overlap
            j += 1
        out[index] = best
    return out


def words_of(spans: np.ndarray, text: str) -> np.ndarray:
    """Per span of one document's rows, the index of its word in `word_spans(text)`; -1: none."""
    return units_of(spans, word_spans(text))


def row_words(rows: Sequence[Mapping[str, Any]], documents: Mapping[str, str], spans: np.ndarray
              ) -> list[tuple[str, int]]:
    """Per row, (document, word index): the key two tokenizers' rows of one corpus share, so
    their tokens can be aggregated to common words. Word -1: the row has no word."""
    names = [str(row["document"]) for row in rows]
    words = np.full(len(names), -1, dtype=np.int64)
    by_document: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_document.setdefault(name, []).append(index)
    for name, indices in by_document.items():
        words[indices] = words_of(np.asarray(spans)[indices], documents[name])
    return list(zip(names, words.tolist()))


# ----------------------------------------------------------------------------- documents
def document_texts(stage_config: Mapping[str, Any], project_root: str | Path,
                   names: Iterable[str] | None = None) -> dict[str, str]:
    """Document name -> text, as a corpus extraction read them (`stage_config`: its config,
    e.g. the store's config.yaml, holding `corpus`); only `names` when given."""
    from laminae.inputs.corpus import sources

    wanted = None if names is None else set(names)
    texts = sources(dict(stage_config), project_root)
    out = {}
    for document in texts.documents():
        name = texts.name(document.file, document.record)
        if wanted is None or name in wanted:
            out[name] = document.text
    return out
