"""The HDF5 activation store: round trip, atomicity, validation on read."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from laminae.errors import InputFileError
from laminae.store import ActivationStore, ActivationWriter, layer_filename, read_tsv, write_tsv

ATTRS = {"stage_hash": "abc1234567", "model_id": "test"}


def write_store(out_dir, data: dict[str, np.ndarray], batch_rows=3, fail_after=None, **kwargs):
    """data[site]: (n_layers, n_rows, width); written in batches of `batch_rows`."""
    n_layers, n_rows = next(iter(data.values())).shape[:2]
    with ActivationWriter(out_dir, n_layers, n_rows, ATTRS, config_text="stage: test\n", **kwargs) as writer:
        for start in range(0, n_rows, batch_rows):
            if fail_after is not None and start >= fail_after:
                raise KeyboardInterrupt("simulated crash")
            writer.write(start, {site: values[:, start : start + batch_rows] for site, values in data.items()})
        writer.set_rows([{"word": f"w{i}", "token": "a\tb\nc\\d\"e"} for i in range(n_rows)], ["word", "token"])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return {"q": rng.normal(size=(3, 10, 8)).astype(np.float32), "v": rng.normal(size=(3, 10, 4)).astype(np.float32)}


def test_round_trip(tmp_path, data):
    out = tmp_path / "activations"
    write_store(out, data)
    store = ActivationStore(out, expected_hash="abc1234567")
    assert store.n_layers == 3 and store.n_rows == 10 and store.widths == {"q": 8, "v": 4}
    np.testing.assert_array_equal(store.read("q"), data["q"].astype(np.float64))
    np.testing.assert_array_equal(store.read("v", layers=[2]), data["v"][2:3])
    chunks = list(store.iter_chunks(["q", "v"], chunk_rows=4))
    assert [start for start, _ in chunks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([c["q"] for _, c in chunks], axis=1), data["q"])
    assert store.column("word") == [f"w{i}" for i in range(10)]
    assert store.rows[0]["token"] == "a\tb\nc\\d\"e"
    assert (out / "config.yaml").read_text() == "stage: test\n"
    with h5py.File(out / "layer_01.h5") as handle:
        assert handle.attrs["layer"] == 1 and handle.attrs["n_layers"] == 3 and handle.attrs["model_id"] == "test"
        assert handle["q"].shape == (10, 8)


def test_float16_storage_and_compression(tmp_path, data):
    out = tmp_path / "activations"
    write_store(out, data, storage_dtype="float16", compression="gzip", chunk_rows=4)
    with h5py.File(out / "layer_00.h5") as handle:
        assert handle["q"].dtype == np.float16 and handle["q"].compression == "gzip" and handle["q"].chunks == (4, 8)
    np.testing.assert_array_equal(ActivationStore(out).read("q"), data["q"].astype(np.float16).astype(np.float64))


def test_crash_mid_write_leaves_nothing(tmp_path, data):
    out = tmp_path / "activations"
    with pytest.raises(KeyboardInterrupt):
        write_store(out, data, fail_after=3)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_rows_fail_and_leave_nothing(tmp_path, data):
    out = tmp_path / "activations"
    with pytest.raises(RuntimeError, match="incomplete"):
        with ActivationWriter(out, 3, 10, ATTRS) as writer:
            writer.write(0, {"q": data["q"][:, :5]})
            writer.set_rows([{}] * 10, [])
    assert list(tmp_path.iterdir()) == []


def test_layers_written_one_by_one_in_any_order_equal_whole_batches(tmp_path, data):
    whole = tmp_path / "whole"
    write_store(whole, data)
    by_layer = tmp_path / "by_layer"
    with ActivationWriter(by_layer, 3, 10, ATTRS, config_text="stage: test\n") as writer:
        for start in (6, 0, 3, 9):  # batches in any order, layers last to first
            for layer in (2, 1, 0):
                writer.write_layer(layer, start, {site: values[layer, start : start + 3] for site, values in data.items()})
        writer.set_rows([{"word": f"w{i}", "token": "a\tb\nc\\d\"e"} for i in range(10)], ["word", "token"])
    for site in data:
        np.testing.assert_array_equal(ActivationStore(by_layer).read(site), ActivationStore(whole).read(site))


def test_a_layer_left_short_fails_and_leaves_nothing(tmp_path, data):
    out = tmp_path / "activations"
    with pytest.raises(RuntimeError, match=r"incomplete: rows written \{'q': 0\}"):
        with ActivationWriter(out, 3, 10, ATTRS) as writer:
            for layer in (0, 2):  # layer 1 never written
                writer.write_layer(layer, 0, {"q": data["q"][layer]})
            writer.set_rows([{}] * 10, [])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="layer 3 outside"):
        with ActivationWriter(out, 3, 10, ATTRS) as writer:
            writer.write_layer(3, 0, {"q": data["q"][0]})


def test_rewrite_replaces_previous_output(tmp_path, data):
    out = tmp_path / "activations"
    write_store(out, data)
    write_store(out, {"q": data["q"] + 1})
    assert ActivationStore(out).sites == ("q",)


def test_truncated_layer_file_is_named(tmp_path, data):
    out = tmp_path / "activations"
    write_store(out, data)
    path = out / "layer_02.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputFileError, match="layer_02.h5"):
        ActivationStore(out)


def test_stage_hash_mismatch_is_reported(tmp_path, data):
    out = tmp_path / "activations"
    write_store(out, data)
    with pytest.raises(InputFileError, match="does not match"):
        ActivationStore(out, expected_hash="0000000000")


def test_missing_layer_and_missing_site(tmp_path, data):
    out = tmp_path / "activations"
    write_store(out, data)
    with pytest.raises(InputFileError, match="has no 'k' activations"):
        ActivationStore(out).read("k")
    (out / "layer_01.h5").unlink()
    with pytest.raises(InputFileError, match="layer_01.h5"):
        ActivationStore(out)


def test_layer_filenames_are_zero_padded():
    assert layer_filename(3, 12) == "layer_03.h5"
    assert layer_filename(7, 150) == "layer_007.h5"


def test_tsv_round_trip_with_hostile_strings(tmp_path):
    rows = [{"a": "tab\there", "b": 'quote " and \\ backslash'}, {"a": "new\nline\r", "b": None}]
    write_tsv(tmp_path / "t.tsv", rows, ["a", "b"])
    assert read_tsv(tmp_path / "t.tsv") == [{"a": "tab\there", "b": 'quote " and \\ backslash'},
                                            {"a": "new\nline\r", "b": ""}]
    assert len((tmp_path / "t.tsv").read_text().splitlines()) == 3
