"""Stimulus prompts, target positions, and corpus windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from laminae.config import compose_config
from laminae.inputs.corpus import corpus_windows, window_rows
from laminae.inputs.windowing import special_tokens_around
from laminae.errors import ConfigError
from laminae.models.gpt2_tokenizer import gpt2_tokenizer
from laminae.inputs.stimuli import build_stimuli, encode_stimuli, stimulus_rows

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = {"fruit": ["apple", "kiwi"], "space": ["sun", "moon"]}


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


def test_default_stimuli_are_34_single_gpt2_tokens(gpt2):
    cfg = compose_config([], ROOT / "conf")
    categories = cfg["stimuli"]["categories"]
    sizes = {name: len(words) for name, words in categories.items()}
    assert sum(sizes.values()) == 34
    assert sizes["furniture"] > sizes["fruit"] > sizes["space"]
    encoded = encode_stimuli(build_stimuli(categories, cfg["template"]["text"]), gpt2)
    assert {len(e.target_tokens) for e in encoded} == {1}
    assert {len(e.input_ids) for e in encoded} == {5}  # the seed's 34 x 5 batch


@pytest.mark.parametrize("template", ["The next word is {word}", "I saw the {word} in the picture yesterday.",
                                      "{word} is here", "A {{braced}} {word}!"])
@pytest.mark.parametrize("position", ["target_last", "last", "target_mean"])
def test_positions_point_at_the_word(gpt2, template, position):
    encoded = encode_stimuli(build_stimuli(CATEGORIES, template), gpt2, position)
    for item in encoded:
        word_text = gpt2.decode([item.input_ids[t] for t in item.target_tokens]).strip()
        assert word_text == item.stimulus.word
        if position == "target_last":
            assert item.positions == [item.target_tokens[-1]]
        elif position == "last":
            assert item.positions == [len(item.input_ids) - 1]
        else:
            assert item.positions == item.target_tokens


def test_multi_token_word_is_recorded_and_warned(gpt2, caplog):
    encoded = encode_stimuli(build_stimuli(CATEGORIES, "The next word is {word}"), gpt2)
    rows = stimulus_rows(encoded, gpt2)
    kiwi = next(r for r in rows if r["word"] == "kiwi")
    assert kiwi["n_tokens"] == 3 and kiwi["token"] == "i"  # ' k', 'iw', 'i': the last piece is kept
    assert "kiwi (3)" in caplog.text


def test_rows_describe_prompt_and_token(gpt2):
    encoded = encode_stimuli(build_stimuli(CATEGORIES, "The next word is {word}"), gpt2)
    row = stimulus_rows(encoded, gpt2)[2]
    assert row == {"word": "sun", "category": "space", "prompt": "The next word is sun", "position": 4,
                   "n_tokens": 1, "token_id": 4252, "token": " sun"}


def test_bad_position_policy(gpt2):
    with pytest.raises(ConfigError, match="extract.position"):
        encode_stimuli(build_stimuli(CATEGORIES, "{word}"), gpt2, "first")


def test_corpus_windows_cover_every_token_once(gpt2, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("word " * 250 + "\n")
    ids = gpt2(doc.read_text().strip())["input_ids"]
    windows = corpus_windows([doc], gpt2, window=100, root=tmp_path)
    assert [len(w.input_ids) for w in windows] == [100, 100, 50]
    assert sum((w.input_ids for w in windows), []) == ids
    rows = window_rows(windows, gpt2)
    assert len(rows) == 250 and rows[100] == {"document": "doc.txt", "window": 1, "position": 0,
                                              "token_id": ids[100], "token": gpt2.decode([ids[100]])}


def test_windowing_off_rejects_long_documents(gpt2, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("word " * 250)
    with pytest.raises(ConfigError, match="corpus.windowing"):
        corpus_windows([doc], gpt2, window=100, windowing=False)
    assert len(corpus_windows([doc], gpt2, window=1024, windowing=False)) == 1


def test_seed_corpus_is_about_340_gpt2_tokens(gpt2):
    (window,) = corpus_windows([ROOT / "data/corpora/nietzsche.txt"], gpt2, window=1024)
    assert 320 <= len(window.input_ids) <= 360
    assert special_tokens_around(gpt2) == ([], [])
