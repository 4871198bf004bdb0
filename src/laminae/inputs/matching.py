"""Match the rows of several corpus stores of one corpus whose models tokenise it differently:
each run's tokens are aggregated to the words of the text they cover (laminae.inputs.alignment:
every token's character span in its document, and the word it overlaps most).

    >>> groups, items = match_corpus_rows([store_a, store_b])     # laminae.store.ActivationStore each
    >>> groups[0]                       # (n_rows of store_a,) item index of each row, -1: no shared word
    >>> items[:3]                       # ['Friedrich', 'Nietzsche', 'was']: the words, in text order

An item is a (document, word) that every run has a token of, in the first run's order; a
token belongs to the word its span overlaps most (a special token, or whitespace, to none).
Each run's tokenizer is read from its model's files (config and tokenizer only, no weights) and
the documents from the corpus as its extraction read them, so the spans index the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from laminae.errors import InputFileError
from laminae.inputs.alignment import document_texts, row_words, token_spans, word_spans
from laminae.provenance import read_stage_record
from laminae.stages.records import ExtractionRecord, model_source
from laminae.store import CONFIG_FILE

if TYPE_CHECKING:
    from laminae.store import ActivationStore


def match_corpus_rows(stores: Sequence["ActivationStore"]) -> tuple[list[np.ndarray], list[str]]:
    """Per store, each row's item (-1: none), and each item's text (see the module docstring)."""
    keys_per_store, texts = [], {}
    for store in stores:
        keys, documents = store_words(store)
        keys_per_store.append(keys)
        texts.update(documents)
    shared = set(keys_per_store[0]).intersection(*keys_per_store[1:])
    shared.discard(None)
    order = list(dict.fromkeys(key for key in keys_per_store[0] if key in shared))
    index = {key: i for i, key in enumerate(order)}
    if not order:
        raise InputFileError(stores[0].dir / "rows.tsv", "no word of the corpus is covered by every run's tokens: "
                                                         "the rows cannot be matched")
    groups = [np.array([index.get(key, -1) for key in keys], dtype=np.int64) for keys in keys_per_store]
    spans = {document: word_spans(texts[document]) for document in dict.fromkeys(d for d, _ in order)}
    words = [texts[document][slice(*spans[document][word])] for document, word in order]
    return groups, words


def store_words(store: "ActivationStore") -> tuple[list[tuple[str, int] | None], dict[str, str]]:
    """Per row of a corpus store, its (document, word index), None for none; and the texts of
    its documents."""
    from laminae.models.loading import open_model

    record = read_stage_record(store.dir / CONFIG_FILE)
    source = model_source(record, record.get("runtime"))
    if source is None:
        raise InputFileError(store.dir / CONFIG_FILE, "not an extraction's record: its rows cannot be matched")
    tokenizer = open_model(source.config, source.models_dir, source.project_root).tokenizer
    rows = list(store.rows)
    documents = document_texts(ExtractionRecord.parse(record).config, source.project_root,
                               {str(row["document"]) for row in rows})
    spans = token_spans(rows, documents, tokenizer)
    keys = [None if word < 0 else (document, word) for document, word in row_words(rows, documents, spans)]
    return keys, documents

