"""Fidelity of an extraction: on its first batch, what laminae's hooks capture is checked against
what the model itself computes, so that a hook in the wrong place never yields a plausible figure.
The check rides on the extraction's own forward pass (one more set of hooks on its first batch:
no pass of its own, so its cost stays a sliver of the extraction's):

    >>> check = FirstBatchCheck(loaded)
    >>> run_plan(loaded, plan, batch_size, writer=writer, sites=sites, check=check)   # raises FidelityError
    >>> check.finish()                          # the float32 comparison, for 16-bit compute
    >>> write_fidelity(check.checks, out_dir / "fidelity.tsv")

Checks, on the first FIDELITY_SEQUENCES inputs' first FIDELITY_TOKENS tokens, as the largest
absolute difference over the largest magnitude of the reference (`max_rel_error`):

- `final_output` (must hold): the last block's `resid_post` through the family's final modules
  (its final norm: `Adapter.final_hidden`) against the model's own output, its last hidden
  state: where the residual stream is hooked, checked against the model itself;
- `chain` (must hold): `resid_post` of block l against `resid_pre` of block l+1 (the blocks
  follow one another: the capture's row selection and copies keep them equal);
- `residual_sum` (must hold where the family's blocks add to the residual stream:
  `Adapter.residual_sum_holds`): `resid_post = resid_pre + attn_out + mlp_out`, summed in float32:
  where the sublayers' outputs are hooked;
- `float32` (recorded, not required) when the model computes in bfloat16 or float16: every site
  of the first input against the same input computed in float32 (the weights cast up exactly,
  then back), after the extraction, when the model's device has room for its float32 weights
  (else left out, logged and recorded as `fidelity_left_out`: a model that fills most of a GPU in
  16 bits must not fail at the end of its extraction); and `float32_top1`, for a model with a next-token readout
  (`laminae.models.readout`): the fraction of the input's tokens whose top-1 next token (the last
  block's resid_post through the readout) differs from float32's.

Tolerances scale with the compute dtype (`TOLERANCE`): the first two compare the same values
(0 unless a hook is misplaced); the sum rounds once per addition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from laminae.capture.hooks import SiteCapture
from laminae.capture.selectors import select_rows, select_tokens
from laminae.errors import LaminaeError
from laminae.store import write_tsv

log = logging.getLogger(__name__)
#: the batch checked: the plan's first sequences, each cut to its first tokens (the checks hold
#: token by token; a short batch keeps their cost a sliver of any extraction's)
FIDELITY_SEQUENCES, FIDELITY_TOKENS = 4, 64
CHECKED_SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
#: max_rel_error allowed of a check that must hold, by compute dtype
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}
#: float32_top1 is recorded, not required: the fraction of tokens whose top-1 may differ in 16 bits
TOP1_TOLERANCE = {torch.float16: 0.05, torch.bfloat16: 0.1}
COLUMNS = ("check", "site", "layer", "reference", "max_abs_error", "max_rel_error", "tolerance", "must_hold", "passed")


class FidelityError(LaminaeError):
    """A check that must hold failed: the captured sites are not what the model computes."""


@dataclass(frozen=True)
class Check:
    """One comparison of a captured site (one layer) with its reference."""

    check: str            # final_output | chain | residual_sum | float32 | float32_top1
    site: str
    layer: int
    reference: str        # what it is compared with, e.g. "resid_pre of layer 3"
    max_abs_error: float
    max_rel_error: float  # max |captured - reference| / max |reference| (float32_top1: the fraction that differ)
    tolerance: float
    must_hold: bool

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.tolerance

    def row(self) -> dict[str, object]:
        return {"check": self.check, "site": self.site, "layer": self.layer, "reference": self.reference,
                "max_abs_error": repr(self.max_abs_error), "max_rel_error": repr(self.max_rel_error),
                "tolerance": repr(self.tolerance), "must_hold": self.must_hold, "passed": self.passed}


class FirstBatchCheck:
    """The fidelity checks of one extraction, made during its first forward pass (module docstring).

    `forward` replaces the model call of the first batch: the model runs once, with these hooks
    beside the extraction's; the must-hold checks are judged at once (FidelityError on failure).
    `finish` adds the float32 comparison, outside the extraction's hooks. `checks` holds them all.
    """

    def __init__(self, loaded, readout: Callable[[], object] | None = None) -> None:
        """`readout`: builds the model's `laminae.models.readout.Readout` on its device, when it has
        one (called only for the float32 comparison of a 16-bit model)."""
        self.loaded = loaded
        self.readout = readout
        self.dtype = next(loaded.model.parameters()).dtype
        self.checks: list[Check] = []
        self.left_out = ""   # a check that could not run, and why (recorded in the provenance)
        self._first: tuple[list[int], dict[str, list[torch.Tensor]]] | None = None  # input, its sites

    def forward(self, sequences: Sequence[Sequence[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The model on one right-padded batch (`sequences` unpadded), its check rows captured and
        judged; returns the model's output."""
        model, adapter = self.loaded.model, self.loaded.adapter
        batch, positions = checked_rows(sequences)
        with SiteCapture(model, adapter, CHECKED_SITES) as capture:
            capture.select = select_rows(torch.tensor(batch), torch.tensor(positions), seq=input_ids.shape[1],
                                         device=input_ids.device)
            output = model(input_ids=input_ids, attention_mask=attention_mask)
            sites = capture.pop()
            final = capture.select(output.last_hidden_state)   # (rows, d_model)
        self._judge(sites, final)
        n_first = sum(1 for b in batch if b == 0)
        self._first = (list(sequences[0]), {site: [rows[:n_first] for rows in layers] for site, layers in sites.items()})
        require_fidelity(self.checks, self.loaded.info.model_id)
        return output

    def finish(self) -> None:
        """The float32 comparison of the first input, for a model computing in 16 bits (a model
        spread by device_map over devices and disk is not cast: left out)."""
        model = self.loaded.model
        if self._first is None or self.dtype not in (torch.bfloat16, torch.float16) \
                or getattr(model, "hf_device_map", None):
            return
        sequence, sites = self._first
        why_not, reference = float32_room(model), None
        if why_not is None:
            try:
                model.to(torch.float32)   # cast up and back: exact for weights held in 16 bits
                reference = _capture(self.loaded, [sequence])
            except (torch.OutOfMemoryError, MemoryError) as error:   # another process took the memory meanwhile
                why_not = f"out of memory ({str(error).splitlines()[0][:120]})"
            finally:
                model.to(self.dtype)
        if reference is None:
            self.left_out = f"the float32 comparison: {why_not}"
            log.warning("fidelity: left out %s", self.left_out)
            return
        for site in CHECKED_SITES:
            for layer, rows in enumerate(sites[site]):
                self.checks.append(_compare("float32", site, layer, rows, reference[site][layer][: len(rows)],
                                            "the same input in float32", TOLERANCE[self.dtype], False))
        if self.readout is not None:
            last = len(sites["resid_post"]) - 1
            final = sites["resid_post"][last]
            self.checks.append(top1_check(self.readout(), final, reference["resid_post"][last][: len(final)], last,
                                          TOP1_TOLERANCE[self.dtype]))

    def _judge(self, sites: dict[str, list[torch.Tensor]], final: torch.Tensor) -> None:
        adapter, model = self.loaded.adapter, self.loaded.model
        tolerance = TOLERANCE.get(self.dtype, 1e-4)
        n_layers = len(sites["resid_pre"])
        with torch.inference_mode():
            derived = adapter.final_hidden(model, sites["resid_post"][-1])
        self.checks.append(_compare("final_output", "resid_post", n_layers - 1, derived, final,
                                    "the model's output (last hidden state)", tolerance, True))
        for layer in range(n_layers - 1):
            self.checks.append(_compare("chain", "resid_post", layer, sites["resid_post"][layer],
                                        sites["resid_pre"][layer + 1], f"resid_pre of layer {layer + 1}", tolerance,
                                        True))
        if adapter.residual_sum_holds(model.config):
            for layer in range(n_layers):
                total = sum(sites[site][layer].float() for site in ("resid_pre", "attn_out", "mlp_out"))
                self.checks.append(_compare("residual_sum", "resid_post", layer, total, sites["resid_post"][layer],
                                            "resid_pre + attn_out + mlp_out", tolerance, True))


def float32_room(model: torch.nn.Module, margin: float = 1.25) -> str | None:
    """None when the device holding `model` has the memory its float32 copy needs (the weights
    cast up in place: 2 more bytes per 16-bit parameter, with a margin for the forward); else
    why not, in words. A model that fills most of a GPU in 16 bits would otherwise fail at the
    end of its extraction."""
    from accelerate.utils import get_max_memory

    extra = sum(p.numel() * (4 - p.element_size()) for p in model.parameters() if p.element_size() < 4)
    device = next(model.parameters()).device
    free = get_max_memory().get(device.index if device.type == "cuda" else "cpu")
    if free is None or extra * margin <= free:
        return None
    return (f"casting the weights to float32 needs {extra * margin / 2**30:.1f} GiB more on {device}, "
            f"{free / 2**30:.1f} GiB free")


def top1_check(readout, final: torch.Tensor, reference: torch.Tensor, layer: int, tolerance: float) -> Check:
    """The fraction of rows whose top-1 next token (`readout.logits`, float32) differs between the
    last block's output `final` (n, d_model) and the same rows computed in float32 `reference`."""
    with torch.inference_mode():
        ours = readout.logits(final.float()).argmax(dim=-1)
        theirs = readout.logits(reference.float()).argmax(dim=-1)
    differ = float((ours != theirs).float().mean()) if ours.numel() else 0.0
    return Check("float32_top1", "logits", layer, "the top-1 next token of the same input in float32 (fraction of "
                 "tokens that differ)", differ, differ, tolerance, False)


def checked_rows(sequences: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(batch index, position) of the checked tokens of a batch: the first FIDELITY_TOKENS of each
    of its first FIDELITY_SEQUENCES inputs.

        >>> checked_rows([[5, 6, 7], [8]])
        ([0, 0, 0, 1], [0, 1, 2, 0])
    """
    pairs = [(b, p) for b, sequence in enumerate(sequences[:FIDELITY_SEQUENCES])
             for p in range(min(len(sequence), FIDELITY_TOKENS))]
    return [b for b, _ in pairs], [p for _, p in pairs]


def measure_fidelity(loaded, sequences: Sequence[Sequence[int]],
                     readout: Callable[[], object] | None = None) -> list[Check]:
    """The checks on their own forward pass of the first FIDELITY_SEQUENCES of `sequences`."""
    from laminae.capture.forward import pad_right

    check = FirstBatchCheck(loaded, readout)
    batch = [list(sequence) for sequence in sequences[:FIDELITY_SEQUENCES]]
    input_ids, attention_mask = pad_right(batch, loaded.tokenizer.pad_token_id, loaded.info.device)
    with torch.inference_mode():
        try:
            check.forward(batch, input_ids, attention_mask)
        except FidelityError:
            pass   # the checks say which failed
    check.finish()
    return check.checks


def require_fidelity(checks: Sequence[Check], model: str) -> None:
    """FidelityError naming the first failed check that must hold (one line)."""
    for check in checks:
        if check.must_hold and not check.passed:
            raise FidelityError(
                f"fidelity check failed for {model}: {check.site} of layer {check.layer} differs from "
                f"{check.reference} by {check.max_rel_error:.3g} (relative; the tolerance is {check.tolerance:g}), "
                f"so the captured sites are not what the model computes ({check.check}): nothing was written")


def fidelity_attrs(checks: Sequence[Check], left_out: str = "") -> dict[str, object]:
    """Provenance attributes: the largest relative error of each check, whether all held, and
    what was left out (`FirstBatchCheck.left_out`)."""
    attrs: dict[str, object] = {"fidelity_passed": all(c.passed for c in checks if c.must_hold)}
    if left_out:
        attrs["fidelity_left_out"] = left_out
    for check in checks:
        key = f"fidelity_{check.check}_max_rel_error"
        attrs[key] = max(float(attrs.get(key, 0.0)), check.max_rel_error)
    return attrs


def write_fidelity(checks: Sequence[Check], path: Path) -> None:
    """fidelity.tsv: one row per check, site and layer."""
    write_tsv(path, [check.row() for check in checks], list(COLUMNS))


@torch.inference_mode()
def _capture(loaded, sequences: Sequence[Sequence[int]]) -> dict[str, list[torch.Tensor]]:
    """The checked sites of every layer on every real token of `sequences` (one right-padded
    batch): {site: [(n_tokens, d_model) per layer]}."""
    from laminae.capture.forward import pad_right

    input_ids, attention_mask = pad_right(sequences, loaded.tokenizer.pad_token_id, loaded.info.device)
    with SiteCapture(loaded.model, loaded.adapter, CHECKED_SITES) as capture:
        capture.select = select_tokens(attention_mask)
        loaded.model(input_ids=input_ids, attention_mask=attention_mask)
        return capture.pop()


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
