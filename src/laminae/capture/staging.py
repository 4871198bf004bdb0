"""Transport of captured rows to host memory: a `LayerSink` (laminae.capture.hooks) that copies
each layer's rows into a ring of reused host buffers and hands the finished layer to a consumer
(the extraction's writer thread, its reducers) while the next blocks compute.

    staging = HostStaging(("q", "k", "v"), depth=4, on_layer=consume)   # consume(StagedLayer)
    with torch.inference_mode(), SiteCapture(model, adapter, ("q", "k", "v"), sink=staging) as cap:
        cap.select = select_last(batch["attention_mask"])
        model(**batch)            # consume() gets layer 0 while block 1 runs, ...
    # consume: staged.wait(); use staged.arrays[site] (numpy, (rows, width)); staging.release(staged)

On a GPU the copies are asynchronous (pinned memory, `non_blocking=True`, a side stream, one
event per layer): no hook waits for the device. `to_device` sends host tensors (indices, inputs)
the other way without blocking.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class StagedLayer:
    """One layer's kept rows of one forward pass, in host memory (see `HostStaging`)."""

    slot: int                        # index into SiteCapture.layers (the layer, when all are captured)
    row: int                         # first row of the pass (HostStaging.row when it ran)
    n_rows: int
    arrays: dict[str, np.ndarray]    # site -> (n_rows, width), a view of a reused host buffer
    events: list[Any] = field(default_factory=list)  # CUDA events of the copies (none on the CPU)
    index: int = 0                   # the ring slot holding it

    def wait(self) -> None:
        """Block until the rows are in host memory (a no-op for rows captured on the CPU)."""
        for event in self.events:
            event.synchronize()


@dataclass
class _Open:
    index: int
    rows: dict[str, int] = field(default_factory=dict)
    streams: dict[torch.device, Any] = field(default_factory=dict)


class HostStaging:
    """A `LayerSink` that copies each layer's rows into host buffers and hands the finished
    layer (`StagedLayer`) to `on_layer`, in the capturing thread, while the next blocks run.

    The host buffers form a ring of `depth` layer slots, each one buffer per site, allocated on
    first use (grown when a pass brings more rows) and reused by every later layer and pass:
    memory stays at `depth` layers of rows, however long the input. A layer takes a free slot
    when its block starts (`begin`), waiting if all `depth` are in use, and the slot comes back
    when each of its `consumers` has called `release`; the wait polls `check` (e.g. a writer
    thread's error), so a failed consumer raises here instead of hanging. With depth = the
    number of captured layers a whole pass stays readable until it is released.

    Rows are converted to `dtype` (the storage dtype; float32 or float16) on their device.
    On a CUDA device each copy runs on a side stream of that device, after the compute stream's
    work so far (`wait_stream`), into pinned memory with `non_blocking=True`; rows that share
    memory with the module's output are first copied on the compute stream (so that the model
    may reuse or change its output), and every layer records one event per device that
    `StagedLayer.wait` synchronises on. So no hook waits for the GPU; the consumer does. On the
    CPU the copy is made in the hook, and `wait` returns at once.
    """

    def __init__(self, sites: Sequence[str], depth: int, dtype: torch.dtype = torch.float32,
                 on_layer: Callable[[StagedLayer], Any] | None = None, consumers: int = 1,
                 check: Callable[[], Any] | None = None) -> None:
        if depth < 1 or consumers < 1:
            raise ValueError(f"depth and consumers must be >= 1; got {depth}, {consumers}")
        self.sites = tuple(sites)
        self.depth, self.dtype, self.consumers = depth, dtype, consumers
        self.on_layer = on_layer
        self.check = check
        self.row = 0  # first row of the current pass: set by the caller before each forward
        self._buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(depth)]
        self._arrays: list[dict[str, np.ndarray]] = [{} for _ in range(depth)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(depth):
            self._free.put(index)
        self._refs = [0] * depth
        self._lock = threading.Lock()
        self._open: dict[int, _Open] = {}
        self._side: dict[torch.device, Any] = {}  # CUDA device -> its copy stream

    # -- the sink ---------------------------------------------------------------------------

    def begin(self, slot: int) -> None:
        if slot in self._open:
            raise RuntimeError(f"layer slot {slot} began twice without ending")
        self._open[slot] = _Open(self._acquire())

    def put(self, site: str, slot: int, rows: torch.Tensor, shared: bool) -> None:
        layer = self._open[slot]
        if rows.dim() != 2:
            raise ValueError(f"{site}: HostStaging needs (rows, width), got {tuple(rows.shape)}")
        if site in layer.rows:
            raise RuntimeError(f"{site}: captured twice in one pass of layer slot {slot}")
        n, width = rows.shape
        target = self._buffer(layer.index, site, n, width, pinned=rows.is_cuda)[:n]
        if rows.is_cuda:
            source = rows.to(self.dtype)  # converted on the device (a new tensor if it differs)
            if source is rows and (shared or not rows.is_contiguous()):
                source = rows.clone(memory_format=torch.contiguous_format)
            source = source.contiguous()
            stream = self._side_stream(rows.device)
            stream.wait_stream(torch.cuda.current_stream(rows.device))
            with torch.cuda.stream(stream):
                target.copy_(source, non_blocking=True)
            source.record_stream(stream)  # not reused by the allocator before the copy ran
            layer.streams[rows.device] = stream
        else:
            target.copy_(rows)  # converts the dtype as .to() would
        layer.rows[site] = n

    def end(self, slot: int) -> None:
        layer = self._open.pop(slot)
        missing = [site for site in self.sites if site not in layer.rows]
        if missing:
            self._give_back(layer.index)
            raise RuntimeError(f"no activations for site {missing[0]!r} in layer slot {slot}: its module "
                               "did not run inside the block")
        counts = set(layer.rows.values())
        if len(counts) != 1:
            self._give_back(layer.index)
            raise RuntimeError(f"layer slot {slot}: sites kept different row counts {layer.rows}")
        n = counts.pop()
        events = []
        for stream in layer.streams.values():
            event = torch.cuda.Event()
            event.record(stream)
            events.append(event)
        staged = StagedLayer(slot, self.row, n, {site: self._arrays[layer.index][site][:n] for site in self.sites},
                             events, layer.index)
        with self._lock:
            self._refs[layer.index] = self.consumers
        if self.on_layer is not None:
            self.on_layer(staged)

    # -- consumers ----------------------------------------------------------------------------

    def release(self, staged: StagedLayer) -> None:
        """One consumer is done with `staged` (thread-safe); after the last, its slot is reused."""
        with self._lock:
            self._refs[staged.index] -= 1
            free = self._refs[staged.index] == 0
        if free:
            self._free.put(staged.index)

    def abandon(self) -> None:
        """Forget layers begun but not ended (after an error inside a forward pass)."""
        for layer in self._open.values():
            self._give_back(layer.index)
        self._open.clear()

    # -- internals ----------------------------------------------------------------------------

    def _acquire(self) -> int:
        while True:
            if self.check is not None:
                self.check()
            try:
                return self._free.get(timeout=0.05)
            except queue.Empty:
                continue

    def _give_back(self, index: int) -> None:
        with self._lock:
            self._refs[index] = 0
        self._free.put(index)

    def _buffer(self, index: int, site: str, n: int, width: int, pinned: bool) -> torch.Tensor:
        buffer = self._buffers[index].get(site)
        if buffer is None or buffer.shape[0] < n or buffer.shape[1] != width or (pinned and not buffer.is_pinned()):
            rows = n if buffer is None else max(n, 2 * buffer.shape[0])  # grow geometrically
            buffer = torch.empty((rows, width), dtype=self.dtype, pin_memory=pinned)
            self._buffers[index][site] = buffer
            self._arrays[index][site] = buffer.numpy()
        return buffer

    def _side_stream(self, device: torch.device) -> Any:
        stream = self._side.get(device)
        if stream is None:
            stream = self._side[device] = torch.cuda.Stream(device=device)
        return stream


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` (on the CPU) on `device`; to a CUDA device from pinned memory with
    `non_blocking=True`, so that the host does not wait for the copy (the caching host allocator
    keeps the pinned block until the copy has run)."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
