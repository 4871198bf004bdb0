"""Collect sites (laminae.sites.SITES: q, k, v, attn_out, mlp_out, resid_pre, resid_post,
mlp_post, pattern) per layer with plain PyTorch forward hooks, keeping only the rows a selector
picks.

    loaded = load_model(cfg["model"])
    batch = forward_inputs(loaded.tokenizer, prompts, loaded.info.device)   # right padding
    with torch.no_grad(), SiteCapture(loaded.model, loaded.adapter, sites=("q", "k", "v")) as cap:
        cap.select = select_last(batch["attention_mask"])   # (batch, seq, w) -> (batch, w)
        loaded.model(**batch)
        out = cap.pop()         # {"q": [tensor (rows, width) per layer], "k": [...], "v": [...]}

Batches must be RIGHT-padded with an `attention_mask` (`laminae.models.loading.forward_inputs`
builds them): each real token then sits at the position it has alone, and causal models need no
`position_ids`. Left padding without `position_ids` silently shifts GPT-2's learned positions.

The selector runs inside the hook, on the module's full output, so a (batch, seq, 3 * d_model)
fused projection is reduced to (rows, 3 * d_model) before anything is kept; the adapter then
splits it by the family's layout (`Adapter.split_qkv`). A module whose output the block later
modifies in place (Falcon's MLP) is copied before it is kept, and one that sees the tokens
flattened to (batch * seq, width) (OPT's MLP) is given back its (batch, seq) shape. `mlp_post`
is the input of the MLP's down projection (a forward pre-hook). `pattern` is the second output
of the attention module, the probabilities (batch, heads, query, key), which only eager attention
computes (`SiteCapture` refuses a model loaded with another kernel): turned into (batch, query,
heads * n_keys), keys zero-padded up to `n_keys` (the longest input; without it, up to this
pass's length, so passes of different lengths cannot be concatenated), then selected. The
selector must index only the leading (batch, seq) dimensions with index tensors on the model's
device (copied once to each other device of a model dispatched over several), so that a hook
never waits for the GPU. Kept tensors are detached and stay on the model's device, in its
compute dtype; several forward passes before one `pop()` are concatenated on the row dimension.

With `reuse_buffers=True` (for a caller that pops after every pass), kept rows are copied into one buffer per
site, allocated on the first pass and reused by every later one, and `pop()` returns views into
it that the next pass overwrites: the model's own outputs are then freed as in an unhooked
forward, so memory stays at one buffer however many batches run (keeping the outputs themselves
lets the allocator's heap fragment and grow from batch to batch).

With a `sink` (what the extraction uses), nothing is kept: the hooks hand every layer's
selected rows to the sink as the layer runs, `sink.begin(slot)` before the block, `sink.put(site,
slot, rows, shared)` per site, `sink.end(slot)` after it. How the rows then reach host memory is
the sink's job (`laminae.capture.staging.HostStaging`), not the hooks'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from laminae.capture.selectors import Selector
from laminae.models.adapters import INPUT_SITES, Adapter
from laminae.sites import QKV, SITES


class LayerSink(Protocol):
    """Where a `SiteCapture(sink=...)` sends the rows of every layer, as the forward pass runs."""

    def begin(self, slot: int) -> None:
        """Layer slot `slot` (an index into `SiteCapture.layers`) is about to run."""

    def put(self, site: str, slot: int, rows: torch.Tensor, shared: bool) -> None:
        """The selected rows (rows, width) of `site`, on the block's device, in its compute
        dtype. `shared`: the rows share memory with the module's output, which the model may
        use or change after the hook; a sink that reads them later (asynchronously) copies them
        first, in stream order."""

    def end(self, slot: int) -> None:
        """Every site of layer slot `slot` has been put."""


class SiteCapture:
    """A context manager that hooks `sites` of `layers` (None: all) and keeps selected rows.

    Only the hooks the sites need are registered (GPT-2's q, k and v share one hook on
    `attn.c_attn`), and all are removed on exit, also after an exception. `n_keys`: the keys
    each `pattern` row is padded to (the longest input; required in practice with a sink or
    several passes, which must all have one width); `pattern` needs a model loaded with eager
    attention (ValueError at construction otherwise).

        >>> from transformers import GPT2Config, GPT2Model
        >>> from laminae.models.adapters import get_adapter
        >>> from laminae.capture.selectors import select_last
        >>> model = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4)).eval()
        >>> adapter = get_adapter("auto", model.config)
        >>> ids = torch.tensor([[5, 6, 7], [8, 9, 0]])          # (batch, seq), right-padded
        >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
        >>> with torch.no_grad(), SiteCapture(model, adapter, sites=("k", "mlp_out"),
        ...                                   layers=[-1]) as cap:
        ...     cap.select = select_last(mask)                 # (batch, seq, w) -> (batch, w)
        ...     _ = model(input_ids=ids, attention_mask=mask)
        ...     out = cap.pop()
        >>> out["k"][0].shape, out["mlp_out"][0].shape          # layer -1: (rows, width) each
        (torch.Size([2, 32]), torch.Size([2, 32]))
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        sites: Iterable[str] = QKV,
        layers: Iterable[int] | None = None,
        select: Selector | None = None,
        reuse_buffers: bool = False,
        sink: LayerSink | None = None,
        n_keys: int | None = None,
    ) -> None:
        self.sites: tuple[str, ...] = tuple(sites)
        unknown = [site for site in self.sites if site not in SITES]
        if unknown or not self.sites or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites must be distinct names from {', '.join(SITES)}; "
                             f"got {list(self.sites)}")
        self.model = model
        self.adapter = adapter
        self.n_keys = n_keys  # pattern rows are padded to this many keys (None: the pass's own)
        if "pattern" in self.sites:
            _require_patterns(model, adapter)
        self._blocks = adapter.blocks(model)
        n_layers = len(self._blocks)
        wanted = list(range(n_layers)) if layers is None else [int(i) for i in layers]
        if any(not -n_layers <= i < n_layers for i in wanted) or len(set(
                i % n_layers for i in wanted)) != len(wanted):
            raise ValueError(f"layers must be distinct indices in [-{n_layers}, {n_layers}); "
                             f"got {wanted}")
        self.layers: list[int] = [i % n_layers for i in wanted]  # negative -> from the end
        self.select: Selector | None = select
        self.widths = adapter.site_widths(model.config, n_keys)
        # site -> one list of kept chunks per captured layer (one chunk per forward pass)
        self._chunks: dict[str, list[list[torch.Tensor]]] = {
            site: [[] for _ in self.layers] for site in self.sites
        }
        self.reuse_buffers = reuse_buffers
        if sink is not None and reuse_buffers:
            raise ValueError("a SiteCapture keeps its rows in buffers (reuse_buffers) or hands them to a sink, not both")
        self.sink = sink
        # reuse_buffers: site -> (n captured layers, capacity rows, width), and rows filled per layer
        self._buffers: dict[str, torch.Tensor] = {}
        self._filled: dict[str, list[int]] = {site: [0 for _ in self.layers] for site in self.sites}
        self._handles: list[RemovableHandle] = []
        self._shapes: dict[int, tuple[int, ...]] = {}  # layer slot -> (batch, seq) of its input

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> SiteCapture:
        if self._handles:
            raise RuntimeError("this SiteCapture is already active")
        try:
            for slot, layer in enumerate(self.layers):
                self._register_layer(slot, self._blocks[layer])
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this capture registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    # -- results --------------------------------------------------------------------------

    def pop(self) -> dict[str, list[torch.Tensor]]:
        """`{site: [tensor per layer in self.layers]}` for the passes since the last pop, each
        (rows, width) with a selector, else (batch, seq, width); then forget them. With
        `reuse_buffers`, the tensors are views into the buffers, valid until the next pass."""
        if self.sink is not None:
            raise RuntimeError("this SiteCapture hands its rows to a sink; it keeps nothing to pop")
        if self.reuse_buffers:
            return self._pop_buffers()
        out: dict[str, list[torch.Tensor]] = {}
        for site, per_layer in self._chunks.items():
            if any(not chunks for chunks in per_layer):
                raise RuntimeError(f"no activations for site {site!r}: did a forward pass of "
                                   "the hooked model run inside the `with` block?")
            out[site] = [chunks[0] if len(chunks) == 1 else torch.cat(chunks)
                         for chunks in per_layer]
        self.clear()
        return out

    def clear(self) -> None:
        """Forget kept activations without returning them (buffers stay allocated for reuse)."""
        for per_layer in self._chunks.values():
            for chunks in per_layer:
                chunks.clear()
        for filled in self._filled.values():
            filled[:] = [0] * len(filled)

    def _pop_buffers(self) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {}
        for site, filled in self._filled.items():
            if not all(filled):
                raise RuntimeError(f"no activations for site {site!r}: did a forward pass of "
                                   "the hooked model run inside the `with` block?")
            out[site] = [self._buffers[site][slot, :n] for slot, n in enumerate(filled)]
        self.clear()
        return out

    def _append(self, site: str, slot: int, rows: torch.Tensor) -> None:
        """Copy `rows` (n, width) after the rows kept so far for (site, layer slot), growing the
        site's buffer when a pass brings more rows than it holds."""
        if rows.dim() != 2:
            raise ValueError("reuse_buffers needs a selector that returns (rows, width)")
        buffer, start = self._buffers.get(site), self._filled[site][slot]
        stop = start + rows.shape[0]
        # One buffer per site, on the device of the first rows it got: with a model dispatched
        # over several devices, the rows of blocks elsewhere are copied into it.
        usable = (buffer is not None and buffer.dtype == rows.dtype
                  and (torch.is_inference_mode_enabled() or not buffer.is_inference()))
        if not usable or stop > buffer.shape[1]:
            device = buffer.device if usable else rows.device
            grown = torch.empty((len(self.layers), stop, rows.shape[1]), dtype=rows.dtype, device=device)
            if usable:
                for other, n in enumerate(self._filled[site]):
                    grown[other, :n] = buffer[other, :n]
            self._buffers[site] = buffer = grown
        buffer[slot, start:stop] = rows
        self._filled[site][slot] = stop

    # -- hooks ----------------------------------------------------------------------------

    def _register_layer(self, slot: int, block: nn.Module) -> None:
        adapter = self.adapter
        sink = self.sink
        if sink is not None:  # first pre-hook and (below) last forward hook of the block
            self._handles.append(block.register_forward_pre_hook(self._begin_hook(slot)))
        sites = [site for site in self.sites if site not in ("resid_pre", "resid_post")]
        fused = [site for site in QKV if site in sites] if adapter.fused_qkv else []
        if fused:
            module = adapter.module(block, "q")
            self._handles.append(module.register_forward_hook(self._fused_hook(slot, fused)))
        if any(site in adapter.flat_sites for site in sites):
            # the (batch, seq) of this block's input, to unflatten (batch * seq, width) outputs
            self._handles.append(block.register_forward_pre_hook(self._shape_hook(slot), with_kwargs=True))
        for site in sites:
            if site in fused:
                continue
            module = adapter.module(block, site)
            if site in INPUT_SITES:   # mlp_post: the down projection's input
                self._handles.append(module.register_forward_pre_hook(self._module_input_hook(slot, site)))
            elif site == "pattern":
                self._handles.append(module.register_forward_hook(self._pattern_hook(slot)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(slot, site)))
        if "resid_pre" in self.sites:
            self._handles.append(block.register_forward_pre_hook(
                self._input_hook(slot), with_kwargs=True))
        if "resid_post" in self.sites:
            self._handles.append(block.register_forward_hook(self._output_hook(slot, "resid_post")))
        if sink is not None:
            self._handles.append(block.register_forward_hook(self._end_hook(slot)))

    def _keep(self, site: str, slot: int, act: torch.Tensor, copy: bool = False) -> None:
        """Select rows of `act` and keep them; `copy`: the module's output will be modified in
        place after the hook, so what is kept must not share its storage."""
        select = self.select
        if self.sink is not None:
            if select is None:
                raise ValueError("a SiteCapture with a sink needs a selector that returns (rows, width)")
            rows = select(act).detach()
            self.sink.put(site, slot, rows, copy or _shares_memory(rows, act))
            return
        if select is not None:
            act = select(act)
        if self.reuse_buffers:
            self._append(site, slot, act.detach())  # copies into the buffer now
        else:
            act = act.detach()
            self._chunks[site][slot].append(act.clone() if copy else _owned(act))

    def _output_hook(self, slot: int, site: str) -> Callable[..., None]:
        flat = site in self.adapter.flat_sites
        copy = site in self.adapter.copy_sites

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # Blocks return a tensor in transformers 5 (GPT2Block, LlamaDecoderLayer, BertLayer)
            # and a tuple in 4.x and some families (GPTNeoBlock, FalconDecoderLayer); sublayer
            # projections always return a tensor.
            act = output[0] if isinstance(output, tuple) else output
            if flat:  # (batch * seq, width) -> (batch, seq, width)
                act = act.view(*self._shapes[slot], act.shape[-1])
            self._keep(site, slot, act, copy=copy)

        return hook

    def _module_input_hook(self, slot: int, site: str) -> Callable[..., None]:
        flat = site in self.adapter.flat_sites
        copy = site in self.adapter.copy_sites

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            act = args[0]   # projections take their input positionally
            if flat:  # (batch * seq, width) -> (batch, seq, width)
                act = act.view(*self._shapes[slot], act.shape[-1])
            self._keep(site, slot, act, copy=copy)

        return hook

    def _pattern_hook(self, slot: int) -> Callable[..., None]:
        n_heads = self.adapter.dims(self.model.config).n_heads

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError(f"{type(module).__name__} returned no attention probabilities for site 'pattern' "
                                   f"(attn_implementation {self.model.config._attn_implementation!r}): load the "
                                   "model with eager attention (load_model(..., patterns=True))")
            self._keep("pattern", slot, pattern_rows(weights, n_heads, self.n_keys))

        return hook

    def _input_hook(self, slot: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._keep("resid_pre", slot, args[0] if args else kwargs["hidden_states"])

        return hook

    def _begin_hook(self, slot: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.sink.begin(slot)

        return hook

    def _end_hook(self, slot: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.sink.end(slot)

        return hook

    def _shape_hook(self, slot: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._shapes[slot] = tuple((args[0] if args else kwargs["hidden_states"]).shape[:-1])

        return hook

    def _fused_hook(self, slot: int, sites: list[str]) -> Callable[..., None]:
        chunks = [self._chunks[site][slot] for site in sites]
        positions = [QKV.index(site) for site in sites]
        subset = len(sites) < len(QKV)
        split, config = self.adapter.split_qkv, self.model.config

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            act = output.detach()  # (batch, seq, q + k + v) in the family's fused layout
            if self.sink is not None:
                if self.select is None:
                    raise ValueError("a SiteCapture with a sink needs a selector that returns (rows, width)")
                selected = self.select(act)
                shared = _shares_memory(selected, act)
                parts = split(selected, config)
                for site, position in zip(sites, positions):
                    self.sink.put(site, slot, parts[position], shared)
                return
            if self.reuse_buffers:
                parts = split(act if self.select is None else self.select(act), config)
                for site, position in zip(sites, positions):
                    self._append(site, slot, parts[position])
                return
            if self.select is not None:
                act = _owned(self.select(act))  # (rows, q + k + v): select before split, once
            parts = split(act, config)
            for kept, position in zip(chunks, positions):
                # With all three kept the parts share storage exactly (or are copies already);
                # with a subset, copy so the unused part of the fused tensor is freed.
                kept.append(parts[position].clone() if subset else parts[position])

        return hook


def pattern_rows(weights: torch.Tensor, n_heads: int, n_keys: int | None = None) -> torch.Tensor:
    """Attention probabilities (batch, heads, query, key) -> (batch, query, heads * n_keys),
    head-major, keys past `key` zero (`n_keys` None: no padding). A new tensor: the model's
    own is never kept.

        >>> w = torch.arange(8.).reshape(1, 2, 2, 2)          # (batch, heads, query, key)
        >>> pattern_rows(w, 2, n_keys=3)[0, 1].tolist()       # query 1: head 0's keys, head 1's
        [2.0, 3.0, 0.0, 6.0, 7.0, 0.0]
    """
    batch, heads, queries, keys = weights.shape
    n_keys = keys if n_keys is None else n_keys
    if heads != n_heads or keys > n_keys:
        raise ValueError(f"attention probabilities of shape {tuple(weights.shape)}: expected {n_heads} heads and at "
                         f"most n_keys={n_keys} keys")
    rows = weights.new_zeros((batch, queries, heads, n_keys))
    rows[..., :keys] = weights.transpose(1, 2)
    return rows.view(batch, queries, heads * n_keys)


def _require_patterns(model: nn.Module, adapter: Adapter) -> None:
    """ValueError unless `model` computes its attention probabilities (eager attention)."""
    if not adapter.returns_pattern:
        raise ValueError(f"site 'pattern': the attention of family {adapter.family!r} does not return probabilities")
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "eager":
        raise ValueError(f"site 'pattern' needs the attention probabilities, which attn_implementation "
                         f"{implementation!r} does not compute: load the model with eager attention "
                         "(laminae.models.loading.load_model(..., patterns=True), or attn_implementation='eager')")


def _shares_memory(rows: torch.Tensor, act: torch.Tensor) -> bool:
    """Whether `rows` is (a view of) the module output `act` (metadata only: no device sync)."""
    return rows.untyped_storage().data_ptr() == act.untyped_storage().data_ptr()


def _owned(act: torch.Tensor) -> torch.Tensor:
    """`act`, copied if it is a view into a larger buffer (e.g. a selector `a[:, -1]`), so a
    kept row never pins a whole (batch, seq, width) output in memory."""
    if act.untyped_storage().nbytes() > act.numel() * act.element_size():
        return act.clone()
    return act
