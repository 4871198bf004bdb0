"""Experiment-2 inputs: text files -> token windows that fit the model's context.

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

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from laminae.errors import ConfigError

ROW_COLUMNS = ("document", "window", "position", "token_id", "token")


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
        name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
        text = path.read_text(encoding="utf-8").strip()  # a file's trailing newline is not content
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > room and not windowing:
            shown = name if root is not None and path.is_relative_to(root) else path
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
