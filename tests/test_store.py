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


# ------------------------------------------------------------------------------ a full disk
# A disk that fills while the store is written (another process took the space after the
# checks of laminae.disk) ends in one DiskSpaceError line, every HDF5 file closed and the
# temporary folder removed; never HDF5's error stack, never a crash at exit.

import errno
import os
import subprocess
import sys
from pathlib import Path

from laminae.disk import DiskSpaceError
from laminae.store import BackgroundWriter

N_LAYERS_FULL, N_ROWS_FULL, WIDTH_FULL = 4, 2000, 64


def fill(out: Path, background: bool) -> None:
    """Write a store of ~4 MB, layer by layer (in a writer thread with `background`)."""
    rng = np.random.default_rng(0)
    with ActivationWriter(out, N_LAYERS_FULL, N_ROWS_FULL, {"stage_hash": "f00d"}) as writer:
        if background:
            with BackgroundWriter() as thread:
                for start in range(0, N_ROWS_FULL, 100):
                    for layer in range(N_LAYERS_FULL):
                        rows = rng.standard_normal((100, WIDTH_FULL), dtype=np.float32)
                        thread.submit(lambda l=layer, s=start, r=rows: writer.write_layer(l, s, {"q": r, "k": r}))
        else:
            for start in range(0, N_ROWS_FULL, 100):
                rows = rng.standard_normal((N_LAYERS_FULL, 100, WIDTH_FULL), dtype=np.float32)
                writer.write(start, {"q": rows, "k": rows})
        writer.set_rows([{"i": i} for i in range(N_ROWS_FULL)], ["i"])


def open_h5_files() -> list:
    return list(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))


@pytest.fixture
def small_disk(tmp_path):
    """A real 600 KB filesystem (tmpfs; root only): skipped where mounting is not permitted."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(mounted.stderr or mounted.stdout).strip()[:120]}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("background", [True, False], ids=["writer-thread", "caller"])
def test_enospc_while_writing_is_one_line_and_leaves_nothing(background, tmp_path, monkeypatch):
    import laminae.store as store

    calls = {"n": 0}
    real = store._write_rows

    def full_after_some(dataset, start, values):
        calls["n"] += 1
        if calls["n"] > 9:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, "
                                        "error message = 'No space left on device')")
        real(dataset, start, values)

    monkeypatch.setattr(store, "_write_rows", full_after_some)
    out = tmp_path / "run" / "activations"
    with pytest.raises(DiskSpaceError) as error:
        fill(out, background)
    message = str(error.value)
    assert "\n" not in message and "no space left on device" in message and str(out) in message
    assert isinstance(error.value.__cause__, OSError) and error.value.__cause__.errno == errno.ENOSPC
    assert list((tmp_path / "run").iterdir()) == []            # nothing partial, no temporary folder
    assert not open_h5_files()                                  # every layer file closed


def test_a_failing_close_still_drops_the_folder(tmp_path, monkeypatch):
    """A close that fails (HDF5 flushing metadata to a full disk) after every write succeeded:
    the other files are closed too, the folder removed, the error one line."""
    out = tmp_path / "run" / "activations"
    real_close = h5py.File.close
    failed = []

    def close(self):
        if not failed:
            failed.append(self.filename)
            real_close(self)
            raise OSError(errno.ENOSPC, "Can't close file (file write failed: errno = 28)")
        real_close(self)

    monkeypatch.setattr(h5py.File, "close", close)
    with pytest.raises(DiskSpaceError, match="no space left on device"):
        fill(out, background=False)
    assert failed and list((tmp_path / "run").iterdir()) == [] and not open_h5_files()


SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {src!r}]
from test_store import fill
from laminae.errors import LaminaeError
try:
    fill(Path({out!r}), background={background})
except LaminaeError as error:
    print(f"laminae: {{error}}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.parametrize("background", [True, False], ids=["writer-thread", "caller"])
def test_a_real_full_disk_ends_in_one_line(background, small_disk):
    """A 4 MB store into a 600 KB tmpfs, in a process of its own (HDF5 files left open would
    be flushed again at exit: tracebacks, then a segfault): one line, exit 1, nothing left."""
    out = small_disk / "results" / "activations"
    code = SCRIPT.format(tests=str(Path(__file__).parent), src=str(Path(__file__).parents[1] / "src"),
                         out=str(out), background=background)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "Exception ignored" not in output and "HDF5-DIAG" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("laminae: folder ") and "no space left on device" in lines[0], output
    assert list(out.parent.iterdir()) == []
    assert os.statvfs(small_disk).f_bfree == os.statvfs(small_disk).f_blocks   # every byte given back
