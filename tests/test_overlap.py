"""Writes overlapped with compute (`run_plan(overlap=True)`: HostStaging + BackgroundWriter):
the store equals the serial path's byte for byte, reducers see the same chunks, memory stays at
a bounded number of layers, and an error in the writer thread surfaces in the caller and leaves
no output. The CUDA path (pinned buffers, side stream, events) runs where a GPU is present."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from laminae.capture import (HostStaging, SiteCapture, forward, iter_batches, overlap_writes, pad_right, row_selector,
                             run_plan, select_rows)
from laminae.disk import DiskSpaceError
from laminae.inputs import ExtractionPlan
from laminae.models.loading import LoadedModel
from laminae.sites import SITES
from laminae.stages.extract import STORAGE_DTYPES
from laminae.store import ActivationWriter, BackgroundWriter, layer_filename

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_gpt2(models_dir) -> LoadedModel:
    """tiny-gpt2 with eager attention, so that every site (SITES, with `pattern`) is captured."""
    from conftest import PROJECT_ROOT, read_model_cfg
    from laminae.models.loading import load_model

    return load_model(read_model_cfg("tiny-gpt2"), device="cpu", models_dir=models_dir, project_root=PROJECT_ROOT,
                      patterns=True)


def make_plan(n_inputs: int, average: bool = False, seed: int = 0) -> ExtractionPlan:
    """Inputs of 3..12 tokens; each keeps 1-3 positions (the last one, or all when `full`)."""
    rng = np.random.default_rng(seed)
    sequences, keep = [], []
    for _ in range(n_inputs):
        length = int(rng.integers(3, 13))
        sequences.append([int(t) for t in rng.integers(10, 5000, size=length)])
        keep.append(sorted(int(p) for p in rng.choice(length, size=int(rng.integers(1, 4)), replace=False)))
    n_rows = n_inputs if average else sum(len(k) for k in keep)
    return ExtractionPlan(sequences=sequences, keep=keep, average=average,
                          rows=[{"i": i} for i in range(n_rows)], columns=("i",))


def full_plan(n_windows: int, length: int = 9) -> ExtractionPlan:
    """Corpus-like: windows of one length, every position kept (the capture's view case)."""
    sequences = [[(7 * w + 3 * p) % 5000 + 10 for p in range(length)] for w in range(n_windows)]
    keep = [list(range(length)) for _ in range(n_windows)]
    return ExtractionPlan(sequences=sequences, keep=keep, average=False,
                          rows=[{"i": i} for i in range(n_windows * length)], columns=("i",))


def extract_to(loaded: LoadedModel, plan: ExtractionPlan, out: Path, overlap: bool, sites=SITES,
               storage: str = "float32", batch_size: int = 3, reducers=()) -> Path:
    with ActivationWriter(out, loaded.info.n_layers, plan.n_rows, {"stage_hash": "h"},
                          storage_dtype=storage) as writer:
        run_plan(loaded, plan, batch_size, writer=writer, sites=sites, reducers=reducers,
                 storage_dtype=STORAGE_DTYPES[storage], overlap=overlap)
        writer.set_rows(plan.rows, plan.columns)
    return out


def assert_same_store(a: Path, b: Path, n_layers: int, sites) -> None:
    for layer in range(n_layers):
        with h5py.File(a / layer_filename(layer, n_layers)) as fa, h5py.File(b / layer_filename(layer, n_layers)) as fb:
            assert sorted(fa) == sorted(fb) == sorted(sites)
            for site in sites:
                x, y = fa[site][()], fb[site][()]
                assert x.dtype == y.dtype and x.shape == y.shape
                assert x.tobytes() == y.tobytes(), f"layer {layer} {site} differs"
    assert (a / "rows.tsv").read_bytes() == (b / "rows.tsv").read_bytes()


def hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# -- equality with the serial path ---------------------------------------------------------------


@pytest.mark.parametrize("plan_kind", ["rows", "average", "full"])
@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_overlap_store_equals_serial_store(tiny_gpt2, tmp_path, plan_kind, storage):
    plan = {"rows": make_plan(7), "average": make_plan(7, average=True), "full": full_plan(5)}[plan_kind]
    serial = extract_to(tiny_gpt2, plan, tmp_path / "serial", overlap=False, storage=storage)
    overlapped = extract_to(tiny_gpt2, plan, tmp_path / "overlap", overlap=True, storage=storage)
    assert_same_store(serial, overlapped, tiny_gpt2.info.n_layers, SITES)
    assert hooks_left(tiny_gpt2.model) == 0


def test_overlap_equals_serial_on_llama_with_a_subset_of_sites(tiny_llama, tmp_path):
    plan = make_plan(6, seed=1)
    sites = ("k", "mlp_out", "resid_post")
    serial = extract_to(tiny_llama, plan, tmp_path / "serial", overlap=False, sites=sites, batch_size=4)
    overlapped = extract_to(tiny_llama, plan, tmp_path / "overlap", overlap=True, sites=sites, batch_size=4)
    assert_same_store(serial, overlapped, tiny_llama.info.n_layers, sites)


class Recorder:
    """A reducer that keeps copies of what it is given."""

    def __init__(self):
        self.chunks = []

    def update(self, start, chunk):
        self.chunks.append((start, {site: np.array(values) for site, values in chunk.items()}))

    def finish(self):
        pass


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_reducers_see_the_same_chunks_and_the_store_is_the_same(tiny_gpt2, tmp_path, storage):
    plan = make_plan(8, seed=2)
    runs = {}
    for overlap in (False, True):
        recorder = Recorder()
        out = extract_to(tiny_gpt2, plan, tmp_path / str(overlap), overlap=overlap, sites=("q", "resid_post"),
                         storage=storage, reducers=[(recorder, ("resid_post", "mlp_out"))])
        runs[overlap] = (out, recorder.chunks)
    assert_same_store(runs[False][0], runs[True][0], tiny_gpt2.info.n_layers, ("q", "resid_post"))
    (_, serial), (_, overlapped) = runs[False], runs[True]
    starts, sizes = [start for start, _ in serial], [chunk["mlp_out"].shape[1] for _, chunk in serial]
    assert starts == [start for start, _ in overlapped] == [int(s) for s in np.cumsum([0, *sizes[:-1]])]
    assert sum(sizes) == plan.n_rows
    for (_, a), (_, b) in zip(serial, overlapped):
        assert a.keys() == b.keys() == {"resid_post", "mlp_out"}
        for site in a:
            assert a[site].dtype == b[site].dtype == np.float32 and a[site].shape[0] == tiny_gpt2.info.n_layers
            np.testing.assert_array_equal(a[site], b[site])


def test_overlap_with_reducers_only_writes_nothing(tiny_gpt2):
    plan = make_plan(5)
    recorder = Recorder()
    run_plan(tiny_gpt2, plan, 2, reducers=[(recorder, ("v",))])
    assert sum(chunk["v"].shape[1] for _, chunk in recorder.chunks) == plan.n_rows


def test_iter_batches_equals_the_capture_of_each_batch(tiny_gpt2):
    """The serial iterator (HostStaging with a buffer per layer) against SiteCapture's
    reuse_buffers path on the same batches."""
    plan = make_plan(5, seed=3)
    seen = [(row, {site: [np.array(a) for a in layers] for site, layers in batch.items()})
            for row, batch in iter_batches(tiny_gpt2, plan, ("q", "attn_out"), 2)]
    row = 0
    for start in range(0, 5, 2):
        sequences, keep = plan.sequences[start:start + 2], plan.keep[start:start + 2]
        ids, mask = pad_right(sequences, tiny_gpt2.tokenizer.pad_token_id, torch.device("cpu"))
        with torch.inference_mode(), SiteCapture(tiny_gpt2.model, tiny_gpt2.adapter, ("q", "attn_out"),
                                                 reuse_buffers=True) as cap:
            cap.select = row_selector(keep, False, torch.device("cpu"))
            tiny_gpt2.model(input_ids=ids, attention_mask=mask)
            expected = cap.pop()
        got_row, got = seen[start // 2]
        assert got_row == row
        for site in ("q", "attn_out"):
            for layer in range(tiny_gpt2.info.n_layers):
                np.testing.assert_array_equal(got[site][layer], expected[site][layer].numpy())
        row += sum(len(k) for k in keep)


def test_iter_batches_closed_early_removes_its_hooks(tiny_gpt2):
    batches = iter_batches(tiny_gpt2, make_plan(6), ("q",), 2)
    next(batches)
    assert hooks_left(tiny_gpt2.model) > 0
    batches.close()
    assert hooks_left(tiny_gpt2.model) == 0


# -- compute dtype independent of the storage dtype --------------------------------------------


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_bfloat16_compute_with_any_storage_dtype(tiny_gpt2, tmp_path, storage):
    model = tiny_gpt2.model
    model.to(torch.bfloat16)
    try:
        plan = make_plan(4, seed=4)
        serial = extract_to(tiny_gpt2, plan, tmp_path / "serial", overlap=False, sites=("q", "resid_post"),
                            storage=storage)
        overlapped = extract_to(tiny_gpt2, plan, tmp_path / "overlap", overlap=True, sites=("q", "resid_post"),
                                storage=storage)
        assert_same_store(serial, overlapped, tiny_gpt2.info.n_layers, ("q", "resid_post"))
        with h5py.File(overlapped / "layer_00.h5") as handle:
            assert handle["q"].dtype == np.dtype(storage)
            values = handle["q"][()].astype(np.float32)
        # bfloat16 values survive float32 storage exactly (and float16 within its range)
        as_bf16 = torch.from_numpy(values).to(torch.bfloat16).to(torch.float32).numpy()
        if storage == "float32":
            np.testing.assert_array_equal(values, as_bf16)
    finally:
        model.to(torch.float32)


# -- errors, atomicity, bounded memory ------------------------------------------------------------


class FailingWriter(ActivationWriter):
    def __init__(self, *args, fail_layer: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_layer = fail_layer
        self.thread_names = set()

    def write_layer(self, layer, start, values):
        self.thread_names.add(threading.current_thread().name)
        if layer == self.fail_layer:
            raise OSError(28, "No space left on device (simulated)")
        super().write_layer(layer, start, values)


@pytest.mark.parametrize("fail_layer", [0, 3])
def test_an_error_in_the_writer_thread_is_raised_here_and_leaves_nothing(tiny_gpt2, tmp_path, fail_layer):
    plan = make_plan(9)
    out = tmp_path / "activations"
    with pytest.raises(DiskSpaceError, match="no space left on device") as raised:   # one line (laminae.disk)
        with FailingWriter(out, tiny_gpt2.info.n_layers, plan.n_rows, {"stage_hash": "h"},
                           fail_layer=fail_layer) as writer:
            run_plan(tiny_gpt2, plan, 2, writer=writer, sites=("q", "resid_pre"))
            writer.set_rows(plan.rows, plan.columns)
    assert "simulated" in str(raised.value.__cause__)   # the writer thread's own error
    assert writer.thread_names == {"laminae-writer"}
    assert not out.exists() and not list(tmp_path.iterdir())  # no output, no temporary folder
    assert hooks_left(tiny_gpt2.model) == 0
    assert not any(t.name == "laminae-writer" for t in threading.enumerate())


def test_an_error_in_the_forward_pass_stops_the_writer_and_leaves_nothing(tiny_gpt2, tmp_path):
    plan = make_plan(6)
    out = tmp_path / "activations"
    block = tiny_gpt2.adapter.blocks(tiny_gpt2.model)[2]
    calls = []

    def boom(module, args):
        calls.append(1)
        if len(calls) == 2:  # the second batch
            raise KeyboardInterrupt("simulated crash")

    handle = block.register_forward_pre_hook(boom)
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_to(tiny_gpt2, plan, out, overlap=True, batch_size=2)
    finally:
        handle.remove()
    assert not out.exists() and not list(tmp_path.iterdir())
    assert hooks_left(tiny_gpt2.model) == 0
    assert not any(t.name == "laminae-writer" for t in threading.enumerate())


def test_layers_in_flight_never_exceed_the_ring(tiny_gpt2, tmp_path, monkeypatch):
    """A slow writer makes the forward wait: at most the ring's layers of rows are staged
    (here 2: OVERLAP_DEPTH, as OVERLAP_BYTES holds less than a layer), and the store is the same."""
    monkeypatch.setattr(forward, "OVERLAP_DEPTH", 2)
    monkeypatch.setattr(forward, "OVERLAP_BYTES", 1)
    in_flight, peak, lock = [0], [0], threading.Lock()
    original_write = forward._write_layer

    def slow_write(writer, sites, staged):
        time.sleep(0.01)
        original_write(writer, sites, staged)
        with lock:
            in_flight[0] -= 1

    original_end = HostStaging.end

    def counting_end(self, slot):
        assert self.depth == 2
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        original_end(self, slot)

    monkeypatch.setattr(forward, "_write_layer", slow_write)
    monkeypatch.setattr(HostStaging, "end", counting_end)
    plan = make_plan(6)
    extract_to(tiny_gpt2, plan, tmp_path / "a", overlap=True, batch_size=2)
    assert peak[0] == 2
    monkeypatch.undo()
    assert_same_store(tmp_path / "a", extract_to(tiny_gpt2, plan, tmp_path / "b", overlap=False, batch_size=2),
                      tiny_gpt2.info.n_layers, SITES)


def test_small_layers_go_to_the_writer_in_jobs_of_several(tiny_gpt2, tmp_path, monkeypatch):
    jobs = []
    original = BackgroundWriter.submit

    def counting(self, job, done=None):
        jobs.append(len(job.args[2]))  # partial(_write_layers, writer, sites, layers)
        original(self, job, done)

    monkeypatch.setattr(BackgroundWriter, "submit", counting)
    extract_to(tiny_gpt2, make_plan(6), tmp_path / "a", overlap=True, batch_size=2)
    n_layers = tiny_gpt2.info.n_layers  # 4: ring of 4 (tiny layers), jobs of 2 layers, 3 batches
    assert forward._ring_depth(tiny_gpt2, make_plan(6), SITES, 2, torch.float32, n_layers) == n_layers
    assert jobs == [2, 2] * 3


@pytest.mark.parametrize("threads,cores,expected", [(2, 2, False), (1, 2, True), (4, 8, True), (8, 8, False)])
def test_auto_overlaps_on_the_cpu_only_when_a_core_is_left_for_the_writer(monkeypatch, threads, cores, expected):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(forward.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert overlap_writes("auto", "cpu") is expected
    assert overlap_writes("auto", "cuda:1") is True      # the GPU computes; the host's cores are free
    assert overlap_writes(True, "cpu") is True and overlap_writes(False, "cuda") is False


def test_background_writer_runs_in_order_and_reports_the_first_error():
    done, ran = [], []
    with pytest.raises(ValueError, match="first"):
        with BackgroundWriter() as background:
            background.submit(lambda: ran.append(1), done=lambda: done.append(1))
            background.submit(lambda: (_ for _ in ()).throw(ValueError("first")), done=lambda: done.append(2))
            background.submit(lambda: ran.append(3), done=lambda: done.append(3))  # skipped, released
    assert ran == [1] and done == [1, 2, 3]


def test_background_writer_skips_pending_jobs_when_the_caller_fails():
    ran, done = [], []
    gate = threading.Event()
    with pytest.raises(RuntimeError, match="caller"):
        with BackgroundWriter() as background:
            background.submit(gate.wait)
            for i in range(5):
                background.submit(lambda i=i: ran.append(i), done=lambda i=i: done.append(i))
            gate.set()
            raise RuntimeError("caller")
    assert len(done) == 5 and len(ran) < 5


def test_staging_refuses_a_layer_with_a_missing_site():
    staging = HostStaging(("q", "k"), depth=1)
    staging.begin(0)
    staging.put("q", 0, torch.zeros(2, 4), shared=False)
    with pytest.raises(RuntimeError, match="'k'"):
        staging.end(0)
    staging.begin(0)  # the slot was given back


def test_staging_converts_like_to():
    rows = torch.randn(5, 7) * 1000
    staged = []
    staging = HostStaging(("q",), depth=1, dtype=torch.float16, on_layer=staged.append)
    staging.begin(0)
    staging.put("q", 0, rows, shared=True)
    staging.end(0)
    assert staged[0].arrays["q"].dtype == np.float16
    np.testing.assert_array_equal(staged[0].arrays["q"], rows.to(torch.float16).numpy())


def test_select_rows_with_host_indices_and_seq_equals_device_selection():
    act = torch.randn(3, 6, 4)
    b, p = torch.tensor([0, 0, 2, 1]), torch.tensor([5, 1, 0, 3])
    expected = act[b, p]
    torch.testing.assert_close(select_rows(b, p)(act), expected, rtol=0, atol=0)
    torch.testing.assert_close(select_rows(b, p, seq=6, device="cpu")(act), expected, rtol=0, atol=0)
    # the full-batch view still applies with a seq hint
    b, p = torch.arange(12) // 6, torch.arange(12) % 6
    view = select_rows(b, p, seq=6, device="cpu")(act[:2])
    assert view.data_ptr() == act.data_ptr()


# -- CUDA: pinned buffers, side stream, events -----------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_overlap_equals_cuda_serial(tiny_gpt2, tmp_path, compute):
    from dataclasses import replace

    model = tiny_gpt2.model
    model.to("cuda", compute)
    loaded = replace(tiny_gpt2, info=replace(tiny_gpt2.info, device="cuda"))
    try:
        for plan in (make_plan(7), full_plan(5)):
            for storage in ("float32", "float16"):
                serial = extract_to(loaded, plan, tmp_path / f"s{storage}{plan.n_rows}", overlap=False, storage=storage)
                overlapped = extract_to(loaded, plan, tmp_path / f"o{storage}{plan.n_rows}", overlap=True,
                                        storage=storage)
                assert_same_store(serial, overlapped, loaded.info.n_layers, SITES)
    finally:
        model.to("cpu", torch.float32)
