"""Capturing a model's sites (laminae.sites.SITES: q, k, v, attn_out, mlp_out, resid_pre,
resid_post, mlp_post, pattern) layer by layer, one job per module:

    hooks      SiteCapture: plain PyTorch forward hooks that keep (or hand to a sink) the rows
               a selector picks, for every block, as the adapter of the model's family locates
               the sites
    selectors  which rows: select_last, select_tokens, select_rows, row_selector (a plan's)
    staging    transport to host memory: HostStaging (a ring of reused host buffers; on a GPU
               asynchronous copies), to_device (host to device without blocking)
    forward    the extraction's loop: run_plan (batches -> writer thread and reducers),
               iter_batches, pad_right, overlap_writes, plan_keys (a plan's pattern keys)

    >>> with torch.no_grad(), SiteCapture(loaded.model, loaded.adapter, sites=("q", "k", "v")) as cap:
    ...     cap.select = select_last(batch["attention_mask"])   # (batch, seq, w) -> (batch, w)
    ...     loaded.model(**batch)
    ...     out = cap.pop()       # {"q": [tensor (rows, width) per layer], "k": [...], "v": [...]}
"""

from laminae.capture.forward import iter_batches, overlap_writes, pad_right, plan_keys, run_plan
from laminae.capture.hooks import LayerSink, SiteCapture
from laminae.capture.selectors import Selector, row_selector, select_last, select_rows, select_tokens
from laminae.capture.staging import HostStaging, StagedLayer, to_device
from laminae.sites import QKV, SITES

__all__ = ["SITES", "QKV", "HostStaging", "LayerSink", "Selector", "SiteCapture", "StagedLayer", "iter_batches",
           "overlap_writes", "pad_right", "plan_keys", "row_selector", "run_plan", "select_last", "select_rows",
           "select_tokens", "to_device"]
