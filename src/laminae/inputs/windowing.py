"""What the corpus's two forms of windows share (`laminae.inputs.corpus`: the in-memory form
and the plan; `laminae.inputs.windows`: the windows on disk): the columns of a corpus's
rows.tsv, and the special tokens a tokenizer wraps each window in. Light (no numpy): the
corpus module is imported when the workflow's DAG is built.
"""

from __future__ import annotations

ROW_COLUMNS = ("document", "window", "position", "token_id", "token")


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text (e.g. [CLS], [SEP])."""
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(content)] == content)
    return full[:start], full[start + len(content) :]
