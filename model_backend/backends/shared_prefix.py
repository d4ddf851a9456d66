"""Attention over one shared prompt prefix plus per-row tails, without copying the prefix per row.

When K prompt contexts share the image prefix, a naive batch keeps K copies of the prefix's
keys/values and every decode step reads all of them. Here the prefix keys/values are kept once
(batch 1) and each layer computes, for all rows at once,

    softmax([q·K_prefix, q·K_tail] * scale) @ [V_prefix; V_tail]

with one matrix product per key/value head against the shared prefix (decode steps). The tails'
own prefill (several query tokens per row, once per generation) uses one fused SDPA call over
the concatenated keys instead, which is faster than materialising the scores. The cache passed to the
model holds only the tail tokens; the rows' padding and causality inside the tails come from
the tail mask set with `shared_prefix(...)`. Outside that context manager the attention is
plain SDPA, so prefills and everything else behave exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "maira2_shared_prefix"


@dataclass
class SharedPrefixState:
    """Prefix keys/values per layer (1, kv_heads, P, dim) and the rows' tail mask (rows, tail_len)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    tail_mask: torch.Tensor


_STATE: ContextVar[SharedPrefixState | None] = ContextVar("maira2_shared_prefix", default=None)


@contextlib.contextmanager
def shared_prefix(state: SharedPrefixState) -> Iterator[None]:
    """Within this block, attention layers attend to `state`'s prefix plus the cached tails."""
    token = _STATE.set(state)
    try:
        yield
    finally:
        _STATE.reset(token)


def _shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    state = _STATE.get()
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)  # fmt: skip
    prefix_keys, prefix_values = state.layers[module.layer_idx]
    rows, q_heads, q_len, dim = query.shape
    kv_heads = prefix_keys.shape[1]
    groups = q_heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    tail_len = key.shape[-2]
    causal = torch.arange(tail_len, device=query.device)[None, :] <= (
        torch.arange(q_len, device=query.device)[:, None] + tail_len - q_len
    )
    allowed = causal[None, None] & state.tail_mask[:, None, None, :tail_len].bool()
    if q_len > 1:  # the tails' own prefill: one fused SDPA call over [prefix; tail] beats materialised scores
        keys = torch.cat([prefix_keys.expand(rows, -1, -1, -1), key], dim=2)
        values = torch.cat([prefix_values.expand(rows, -1, -1, -1), value], dim=2)
        full_mask = torch.cat([allowed.new_ones((rows, 1, q_len, prefix_keys.shape[2])), allowed], dim=-1)
        output = torch.nn.functional.scaled_dot_product_attention(
            query, keys, values, attn_mask=full_mask, scale=scale, enable_gqa=groups > 1
        )
        return output.transpose(1, 2).contiguous(), None
    # (rows, q_heads, q_len, dim) -> (kv_heads, rows * groups * q_len, dim): one product per kv head.
    q_shared = query.view(rows, kv_heads, groups, q_len, dim).permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, dim)
    prefix_scores = torch.matmul(q_shared, prefix_keys[0].transpose(-1, -2))  # (kv_heads, N, P)
    prefix_scores = prefix_scores.view(kv_heads, rows, groups, q_len, -1).permute(1, 0, 2, 3, 4)
    prefix_scores = prefix_scores.reshape(rows, q_heads, q_len, -1)
    tail_keys = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    tail_values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    tail_scores = torch.matmul(query, tail_keys.transpose(-1, -2))  # (rows, q_heads, q_len, T)
    tail_scores = tail_scores.masked_fill(~allowed, float("-inf"))
    scores = torch.cat([prefix_scores, tail_scores], dim=-1).float() * scale
    probs = torch.softmax(scores, dim=-1).to(query.dtype)
    prefix_len = prefix_scores.shape[-1]
    prefix_probs = probs[..., :prefix_len]
    p_shared = prefix_probs.reshape(rows, kv_heads, groups, q_len, prefix_len).permute(1, 0, 2, 3, 4)
    prefix_out = torch.matmul(p_shared.reshape(kv_heads, -1, prefix_len), prefix_values[0])  # (kv_heads, N, dim)
    prefix_out = prefix_out.view(kv_heads, rows, groups, q_len, dim).permute(1, 0, 2, 3, 4)
    output = prefix_out.reshape(rows, q_heads, q_len, dim) + torch.matmul(probs[..., prefix_len:], tail_values)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, _shared_prefix_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
