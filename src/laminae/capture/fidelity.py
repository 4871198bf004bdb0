"""Fidelity of an extraction: on its first batch, what laminae's hooks capture is checked against
the model's own outputs, so that a hook in the wrong place never yields a plausible figure.

    >>> checks = measure_fidelity(loaded, plan.sequences)     # its first FIDELITY_SEQUENCES, cut short
    >>> failed = [check for check in checks if not check.passed and check.must_hold]
    >>> write_fidelity(checks, out_dir / "fidelity.tsv")

Checks, each per layer, on every real (unpadded) token of the batch, as the largest absolute
difference over the largest magnitude of the reference (`max_rel_error`):

- `hidden_state` (must hold): the captured `resid_pre` of block l against the model's own
  hidden state l (`output_hidden_states`), and `resid_post` of block l against hidden state l+1,
  but the last block's. transformers 5 records these with hooks of its own on the blocks, so
  this checks the capture's row selection, padding and copies more than where it hooks;
- `final_output` (must hold): the last block's `resid_post` through the family's final modules
  (its final norm: `Adapter.final_hidden`) against the model's last hidden state, the output of
  its own forward: where the residual stream is hooked, checked against the model itself;
- `residual_sum` (must hold where the family's blocks add to the residual stream:
  `Adapter.residual_sum_holds`): `resid_post = resid_pre + attn_out + mlp_out`, summed in float32;
- `float32` (recorded, not required) when the model computes in bfloat16 or float16: every site
  against the same batch computed in float32 (the weights cast up exactly, then back).

Tolerances scale with the compute dtype (`TOLERANCE`): the first two compare the same tensors
(differences are 0 unless a hook is misplaced); the sum rounds once per addition.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from laminae.capture.hooks import SiteCapture
from laminae.capture.selectors import select_tokens
from laminae.errors import LaminaeError
from laminae.store import write_tsv

#: the batch checked: the plan's first sequences, each cut to its first tokens (the checks hold
#: token by token; a short batch keeps their cost a sliver of any extraction's)
FIDELITY_SEQUENCES, FIDELITY_TOKENS = 4, 64
CHECKED_SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
#: max_rel_error allowed of a check that must hold, by compute dtype
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}
#: what transformers sets on a model once it has installed its hidden-state hooks
INSTALLED_FLAG = "_output_capturing_hooks_installed"
_ABSENT = object()
COLUMNS = ("check", "site", "layer", "reference", "max_abs_error", "max_rel_error", "tolerance", "must_hold", "passed")


class FidelityError(LaminaeError):
    """A check that must hold failed: the captured sites are not what the model computes."""


@dataclass(frozen=True)
class Check:
    """One comparison of a captured site (one layer) with its reference."""

    check: str            # hidden_state | final_output | residual_sum | float32
    site: str
    layer: int
    reference: str        # what it is compared with, e.g. "hidden_states[3]"
    max_abs_error: float
    max_rel_error: float  # max |captured - reference| / max |reference|
    tolerance: float
    must_hold: bool

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.tolerance

    def row(self) -> dict[str, object]:
        return {"check": self.check, "site": self.site, "layer": self.layer, "reference": self.reference,
                "max_abs_error": repr(self.max_abs_error), "max_rel_error": repr(self.max_rel_error),
                "tolerance": repr(self.tolerance), "must_hold": self.must_hold, "passed": self.passed}


def measure_fidelity(loaded, sequences: Sequence[Sequence[int]]) -> list[Check]:
    """Every check of the module docstring on the first FIDELITY_SEQUENCES of `sequences`
    (token ids), each cut to FIDELITY_TOKENS, right-padded into one batch."""
    from laminae.capture.forward import pad_right

    sequences = [list(sequence[:FIDELITY_TOKENS]) for sequence in sequences[:FIDELITY_SEQUENCES]]
    model, adapter, config = loaded.model, loaded.adapter, loaded.model.config
    input_ids, attention_mask = pad_right(sequences, loaded.tokenizer.pad_token_id, loaded.info.device)
    dtype = next(model.parameters()).dtype
    tolerance = TOLERANCE.get(dtype, 1e-4)
    sites, hidden = _forward(loaded, input_ids, attention_mask)
    n_layers = len(sites["resid_pre"])
    checks = []
    for layer in range(n_layers):
        checks.append(_compare("hidden_state", "resid_pre", layer, sites["resid_pre"][layer], hidden[layer],
                               f"hidden_states[{layer}]", tolerance, True))
        if layer < n_layers - 1:
            checks.append(_compare("hidden_state", "resid_post", layer, sites["resid_post"][layer],
                                   hidden[layer + 1], f"hidden_states[{layer + 1}]", tolerance, True))
    with torch.inference_mode():
        final = adapter.final_hidden(model, sites["resid_post"][-1])
    checks.append(_compare("final_output", "resid_post", n_layers - 1, final, hidden[n_layers],
                           f"final modules -> hidden_states[{n_layers}]", tolerance, True))
    if adapter.residual_sum_holds(config):
        for layer in range(n_layers):
            total = sum(sites[site][layer].float() for site in ("resid_pre", "attn_out", "mlp_out"))
            checks.append(_compare("residual_sum", "resid_post", layer, total, sites["resid_post"][layer],
                                   "resid_pre + attn_out + mlp_out", tolerance, True))
    if dtype in (torch.bfloat16, torch.float16) and not getattr(model, "hf_device_map", None):
        # cast up and back: exact for weights held in 16 bits (a model spread by device_map over
        # devices and disk is not cast; its float32 comparison is left out)
        model.to(torch.float32)
        try:
            reference, _ = _forward(loaded, input_ids, attention_mask)
        finally:
            model.to(dtype)
        for site in CHECKED_SITES:
            for layer in range(n_layers):
                checks.append(_compare("float32", site, layer, sites[site][layer], reference[site][layer],
                                       "the same batch in float32", TOLERANCE[dtype], False))
    return checks


def require_fidelity(checks: Sequence[Check], model: str) -> None:
    """FidelityError naming the first failed check that must hold (one line)."""
    for check in checks:
        if check.must_hold and not check.passed:
            raise FidelityError(
                f"fidelity check failed for {model}: {check.site} of layer {check.layer} differs from "
                f"{check.reference} by {check.max_rel_error:.3g} (relative; the tolerance is {check.tolerance:g}), "
                f"so the captured sites are not what the model computes ({check.check}): nothing was written")


def fidelity_attrs(checks: Sequence[Check]) -> dict[str, object]:
    """Provenance attributes: the largest relative error of each check, and whether all held."""
    attrs: dict[str, object] = {"fidelity_passed": all(c.passed for c in checks if c.must_hold)}
    for check in checks:
        key = f"fidelity_{check.check}_max_rel_error"
        attrs[key] = max(float(attrs.get(key, 0.0)), check.max_rel_error)
    return attrs


def write_fidelity(checks: Sequence[Check], path: Path) -> None:
    """fidelity.tsv: one row per check, site and layer."""
    write_tsv(path, [check.row() for check in checks], list(COLUMNS))


@torch.inference_mode()
def _forward(loaded, input_ids: torch.Tensor, attention_mask: torch.Tensor
             ) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """The checked sites of every layer and the model's hidden states, on the real tokens:
    ({site: [(n_tokens, d_model) per layer]}, [(n_tokens, width) per hidden state])."""
    select = select_tokens(attention_mask)
    with SiteCapture(loaded.model, loaded.adapter, CHECKED_SITES) as capture, _model_left_as_found(loaded.model):
        capture.select = select
        output = loaded.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        sites = capture.pop()
    return sites, [select(state) for state in output.hidden_states]


@contextlib.contextmanager
def _model_left_as_found(model: torch.nn.Module) -> Iterator[None]:
    """Remove the hooks the forward itself installs: transformers 5 records `hidden_states` with
    forward hooks it installs on first use and keeps (with a flag on the model); the extraction's
    model must carry no hook of anyone's after the check."""
    modules = list(model.modules())
    hooks = [(set(m._forward_hooks), set(m._forward_pre_hooks)) for m in modules]
    flags = [m.__dict__.get(INSTALLED_FLAG, _ABSENT) for m in modules]
    try:
        yield
    finally:
        for module, (forward, pre), flag in zip(modules, hooks, flags):
            for key in set(module._forward_hooks) - forward:
                del module._forward_hooks[key]
            for key in set(module._forward_pre_hooks) - pre:
                del module._forward_pre_hooks[key]
            if flag is _ABSENT:
                module.__dict__.pop(INSTALLED_FLAG, None)


def _compare(check: str, site: str, layer: int, captured: torch.Tensor, reference: torch.Tensor, what: str,
             tolerance: float, must_hold: bool) -> Check:
    captured, reference = captured.double().cpu(), reference.double().cpu()
    if captured.shape != reference.shape:
        return Check(check, site, layer, f"{what} (shape {tuple(reference.shape)}, captured {tuple(captured.shape)})",
                     math.inf, math.inf, tolerance, must_hold)
    error = float((captured - reference).abs().max()) if captured.numel() else 0.0
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return Check(check, site, layer, what, error, error / scale if scale else (0.0 if error == 0 else math.inf),
                 tolerance, must_hold)
