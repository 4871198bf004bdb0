"""Corpora at research size: .jsonl and Parquet documents, `corpus.max_tokens`, windows on disk.

The same documents as a folder of .txt files, as one .jsonl and as one Parquet file give the
same windows and rows as the in-memory reference (`corpus_windows` / `window_rows`), but for
the documents' names; `max_tokens` cuts the corpus at exactly that many tokens; shards of the
on-disk windows cover it once; rows.tsv read by column equals it read whole; and every bad input
fails with one line naming the key and the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laminae.errors import ConfigError
from laminae.shards import Shard
from laminae.inputs.corpus import corpus_windows, sources, validate, window_rows
from laminae.inputs.windows import TokenWindows
from laminae.store import RowTable, read_tsv, write_tsv

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The first document, short.", "  A second one, with more words than the window holds: " * 6,
         "Third.\nIt has two lines and a tab\there."]


@pytest.fixture(scope="module")
def gpt2():
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


def _cfg(path: Path, **corpus) -> dict:
    return {"corpus": {"name": "c", "path": str(path), "windowing": True, "window_tokens": 16, "text_field": "text",
                       "text_column": "text", "max_tokens": None, "shards": 1, **corpus}}


@pytest.fixture()
def three_forms(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    for index, text in enumerate(TEXTS):
        (folder / f"{index}.txt").write_text(text, encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(TEXTS)) + "\n\n",
                     encoding="utf-8")
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": TEXTS, "n": [1, 2, 3]}), parquet, row_group_size=2)
    return folder, jsonl, parquet


def _windows(cfg, tokenizer, root) -> TokenWindows:
    corpus = cfg["corpus"]
    return TokenWindows.build(sources(cfg, root), tokenizer, corpus["window_tokens"], corpus["windowing"],
                              corpus["max_tokens"])


def test_txt_jsonl_and_parquet_give_the_reference_windows_and_rows(three_forms, gpt2, tmp_path):
    folder, jsonl, parquet = three_forms
    reference = corpus_windows(sorted(folder.iterdir()), gpt2, 16, root=tmp_path)
    expected_rows = window_rows(reference, gpt2)
    names = {"txt": [f"txt/{i}.txt" for i in range(3)], "jsonl": [f"docs.jsonl:{i + 1}" for i in range(3)],
             "parquet": [f"docs.parquet:{i}" for i in range(3)]}
    for kind, cfg in (("txt", _cfg(folder)), ("jsonl", _cfg(jsonl)), ("parquet", _cfg(parquet, text_column="body"))):
        validate(cfg, tmp_path)
        windows = _windows(cfg, gpt2, tmp_path)
        assert windows.n_windows == len(reference) > 5, kind
        part = windows.part(0, windows.n_windows)
        assert part.sequences[:] == [w.input_ids for w in reference], kind
        assert part.keep[:] == [list(range(len(w.input_ids))) for w in reference]
        rows = list(part.rows)
        rename = dict(zip(names["txt"], names[kind]))
        assert rows == [{**row, "document": rename[row["document"]]} for row in expected_rows], kind
        for column in ("window", "position", "token_id"):
            assert part.rows.integers(column).tolist() == [row[column] for row in expected_rows]
        assert part.rows.column("token") == [row["token"] for row in expected_rows]
        assert part.rows.column("document") == [rename[row["document"]] for row in expected_rows]
        windows.close()
        assert not windows.folder.exists()


def test_max_tokens_cuts_the_corpus_there_and_shards_cover_it_once(three_forms, gpt2, tmp_path):
    _, jsonl, _ = three_forms
    total = sum(len(gpt2(t.strip(), add_special_tokens=False)["input_ids"]) for t in TEXTS)
    for cap in (1, 7, 30, total - 1, total, total + 50):
        windows = _windows(_cfg(jsonl, max_tokens=cap), gpt2, tmp_path)
        assert windows.n_tokens == min(cap, total)   # GPT-2 adds no special tokens
    windows = _windows(_cfg(jsonl), gpt2, tmp_path)
    from laminae.shards import shard_windows

    seen = []
    for index in range(3):
        first, stop = shard_windows(windows.n_windows, Shard(index, 3, 2))
        part = windows.part(first, stop)
        assert part.first_row == len(seen)
        seen += part.rows.integers("token_id").tolist()
    assert seen == windows.tokens.tolist()


def test_rows_read_by_column_equal_rows_read_whole(tmp_path):
    records = [{"row": i, "document": f"d{i % 2}", "token": t} for i, t in enumerate(["a", "\t", "\"q\"", "x\ny", ""])]
    write_tsv(tmp_path / "rows.tsv", records, ["row", "document", "token"])
    table = RowTable.from_tsv(tmp_path / "rows.tsv")
    assert len(table) == 5 and table.columns == ("row", "document", "token")
    assert list(table) == read_tsv(tmp_path / "rows.tsv") and table[3]["token"] == "x\ny"
    assert table.integers("row").tolist() == list(range(5)) and table.column("token")[1] == "\t"


BAD = {
    "missing field in the first record": ("a.jsonl", '{"body": "x"}\n', {}, "corpus.text_field",
                                          "line 1 has no 'text'"),
    "text that is a number": ("a.jsonl", '{"text": 3}\n', {}, "corpus.text_field", "line 1 holds int 3"),
    "not JSON": ("a.jsonl", '{"text": "x"\n', {}, "corpus.path", "line 1 is not JSON"),
    "not UTF-8": ("a.txt", b"caf\xe9", {}, "corpus.path", "UTF-8 text files"),
    "blank .txt": ("a.txt", "  \n", {}, "corpus.path", "non-empty text files"),
    "empty .jsonl": ("a.jsonl", "\n\n", {}, "corpus.path", "has no record"),
    "not Parquet": ("a.parquet", b"not parquet at all", {}, "corpus.path", "readable Parquet files"),
    "no such column": ("a.parquet", {"body": ["x"]}, {}, "corpus.text_column", "its columns: body"),
    "a column of numbers": ("a.parquet", {"text": [1, 2]}, {}, "corpus.text_column", "a column of text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_corpora_fail_before_any_job_in_one_line(case, tmp_path):
    name, content, corpus, key, words = BAD[case]
    path = tmp_path / name
    if isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        validate(_cfg(path, **corpus), tmp_path)
    message = str(error.value)
    assert f"'{key}'" in message and words in message and str(path) in message and "\n" not in message, message


LATE = {
    "missing field": ('{"text": "fine"}\n{"body": "x"}\n', "corpus.text_field", "line 2 has no 'text'"),
    "a list instead of text": ('{"text": "fine"}\n\n{"text": ["x"]}\n', "corpus.text_field", "line 3 holds list"),
}


@pytest.mark.parametrize("case", list(LATE))
def test_a_bad_record_further_in_fails_while_planning_before_the_model_loads(case, tmp_path, gpt2):
    content, key, words = LATE[case]
    (tmp_path / "a.jsonl").write_text(content, encoding="utf-8")
    cfg = _cfg(tmp_path / "a.jsonl")
    validate(cfg, tmp_path)   # the first record is fine
    with pytest.raises(ConfigError, match=f"'{key}'.*{words}"):
        _windows(cfg, gpt2, tmp_path)


def test_a_null_parquet_value_is_named(tmp_path, gpt2):
    pq.write_table(pa.table({"text": ["fine", None]}), tmp_path / "a.parquet")
    cfg = _cfg(tmp_path / "a.parquet")
    validate(cfg, tmp_path)
    with pytest.raises(ConfigError, match="'corpus.text_column'.*row 1 is null"):
        _windows(cfg, gpt2, tmp_path)


def test_windows_on_disk_are_removed_when_planning_fails(tmp_path, gpt2, monkeypatch):
    import tempfile

    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": 1}\n', encoding="utf-8")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(ConfigError):
        _windows(_cfg(tmp_path / "a.jsonl"), gpt2, tmp_path)
    assert not list(scratch.iterdir())
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n', encoding="utf-8")
    windows = _windows(_cfg(tmp_path / "b.jsonl", max_tokens=1), gpt2, tmp_path)
    assert len(list(scratch.iterdir())) == 1 and np.asarray(windows.tokens).size == 1
    del windows
    import gc

    gc.collect()
    assert not list(scratch.iterdir())
