"""Attention masks for packed rows (several documents in one row, none attending across): a dense additive mask
for ``sdpa``/``eager`` and a block-sparse ``BlockMask`` for ``flex_attention`` (no Lightning)."""

from __future__ import annotations

import torch


def packed_attention_mask(doc_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) additive mask: causal and never across documents.

    Padding carries doc id -1 and only sees itself, so no row is fully masked.
    """
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    allowed = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
    return torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def packed_block_mask(doc_ids: torch.Tensor):
    """(B, T) document ids -> a ``flex_attention`` ``BlockMask``: causal and never across documents, with no dense
    (T, T) mask; blocks that hold no allowed pair are skipped. (transformers' own packing detection from position
    ids gave wrong logits after the first document with transformers 5.24, so ra3 builds the mask itself.)"""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, kv):
        return (kv <= q) & (doc_ids[b, q] == doc_ids[b, kv])

    B, T = doc_ids.shape
    return create_block_mask(same_document_causal, B, None, T, T, device=doc_ids.device)
