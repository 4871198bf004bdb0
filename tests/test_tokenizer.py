"""GPT-2's tokenizer rebuilt offline must tokenise exactly like GPT-2."""

from __future__ import annotations

import pytest

from laminae.models.gpt2_tokenizer import gpt2_tokenizer


def test_known_ids() -> None:
    tok = gpt2_tokenizer()
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert len(tok) == 50257
    assert tok.eos_token_id == 50256
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 50256


@pytest.mark.parametrize("word", ["sun", "orange", "chair", "apple"])
def test_common_words_after_a_space_are_one_token(word: str) -> None:
    assert len(gpt2_tokenizer()(f" {word}")["input_ids"]) == 1


def test_template_prompt_is_five_tokens() -> None:
    ids = gpt2_tokenizer()("The next word is sun")["input_ids"]
    assert len(ids) == 5
    assert ids[-1] == gpt2_tokenizer()(" sun")["input_ids"][0]


@pytest.mark.parametrize(
    "text",
    ["Hello world", "  two  spaces\nand a newline", "Übermensch — Nietzsche's idea 🙂",
     "x=1+2;"],
)
def test_decode_round_trip(text: str) -> None:
    tok = gpt2_tokenizer()
    assert tok.decode(tok(text)["input_ids"]) == text


def test_cached_tokenizer_has_no_pad_token() -> None:
    # Loading code must not mutate the shared cached instance (e.g. by setting a pad token).
    assert gpt2_tokenizer().pad_token is None
