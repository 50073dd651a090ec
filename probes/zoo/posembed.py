"""Fixed 2-D sin-cos position embeddings, each built with its method's own formula.

MoCo v3 and CAE store ``[sin(row w), cos(row w), sin(col w), cos(col w)]``; MAE stores the two halves
swapped, ``[sin(col w), cos(col w), sin(row w), cos(row w)]`` (docs/checkpoints.md#sin-cos-position-embeddings).
Neither equals ``timm.layers.build_sincos2d_pos_embed``, so a model built at another resolution must
regenerate its table with these functions rather than with timm's helper or with bicubic resampling.
Both prepend an all-zero row for the CLS token, as the original code does.
"""
from __future__ import annotations

import numpy as np
import torch


def _check_dim(embed_dim: int) -> None:
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}")


def mocov3_sincos_pos_embed(grid_size: tuple[int, int], embed_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3 ``vits.py`` / CAE ``modeling_cae_helper.py``: float32 throughout, rows first. -> [1, 1+H*W, D]."""
    _check_dim(embed_dim)
    h, w = grid_size
    # The original calls torch.meshgrid(grid_w, grid_h) with 'ij' indexing, so its "w" is the row index.
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pos_dim = embed_dim // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_r = torch.einsum("m,d->md", rows.flatten(), omega)
    out_c = torch.einsum("m,d->md", cols.flatten(), omega)
    table = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return torch.cat([torch.zeros(1, embed_dim), table], dim=0)[None]


def mae_sincos_pos_embed(grid_size: tuple[int, int], embed_dim: int) -> torch.Tensor:
    """MAE ``util/pos_embed.py``: float64 numpy, columns first, cast to float32. -> [1, 1+H*W, D]."""
    _check_dim(embed_dim)
    h, w = grid_size
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))  # "here w goes first"

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0)
        out = np.einsum("m,d->md", pos.reshape(-1), 1.0 / 10000**omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)
    table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return torch.from_numpy(table).float()[None]

