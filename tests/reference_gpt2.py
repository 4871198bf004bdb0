"""An independent GPT-2 forward pass in NumPy, written from the architecture description
(Radford et al. 2019) and the checkpoint's tensor names, sharing no code with transformers
or laminae. Tests compare the stored activations against it.

    >>> sites = reference_gpt2_sites(state_dict, n_heads=4, input_ids=[464, 1306, 1573])
    >>> sites["q"][layer].shape       # (seq, d_model)
    >>> sites["pattern"][layer].shape # (seq, n_heads, seq): query, head, key
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_gpt2_sites(weights: Mapping[str, np.ndarray], n_heads: int, input_ids: Sequence[int],
                         eps: float = 1e-5) -> dict[str, list[np.ndarray]]:
    """Every site of every block for one unpadded sequence, in float64.

    `weights`: GPT2Model state dict as NumPy arrays (keys `wte.weight`, `h.0.attn.c_attn.weight`,
    ...; Conv1D weights are (in, out))."""
    w = {k.removeprefix("transformer."): np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    ids = np.asarray(input_ids)
    seq = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(seq)]  # (seq, d_model)
    d_model = x.shape[1]
    head = d_model // n_heads
    causal = np.triu(np.full((seq, seq), -np.inf), k=1)
    sites: dict[str, list[np.ndarray]] = {s: [] for s in ("q", "k", "v", "attn_out", "mlp_out", "resid_pre", "resid_post",
                                                          "mlp_post", "pattern")}
    n_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("h."))
    for layer in range(n_layers):
        p = f"h.{layer}."
        sites["resid_pre"].append(x)
        h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = qkv[:, :d_model], qkv[:, d_model : 2 * d_model], qkv[:, 2 * d_model :]
        sites["q"].append(q), sites["k"].append(k), sites["v"].append(v)
        heads, pattern = [], []
        for i in range(n_heads):
            cols = slice(i * head, (i + 1) * head)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(head) + causal
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probabilities = scores / scores.sum(-1, keepdims=True)      # (query, key)
            pattern.append(probabilities)
            heads.append(probabilities @ v[:, cols])
        sites["pattern"].append(np.stack(pattern, axis=1))             # (query, heads, key)
        attn_out = np.concatenate(heads, axis=1) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        x = x + attn_out
        h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        mlp_post = _gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])   # (seq, d_mlp)
        mlp_out = mlp_post @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        sites["mlp_post"].append(mlp_post)
        x = x + mlp_out
        sites["attn_out"].append(attn_out), sites["mlp_out"].append(mlp_out), sites["resid_post"].append(x)
    return sites
