"""Classification heads trained on top of a frozen encoder, each a small copy of its reference code.

Linear heads take one vector per image ``[B, D]`` (a cached feature such as ``cls``); attentive heads
take the encoder's output tokens ``[B, T, D]`` and pool them with one learned query.

| name        | reference (repo @ file)                                                        |
|-------------|--------------------------------------------------------------------------------|
| `linear`    | JiePKU/understand-ssl-part-aware retrieval-classification/patch_lincls.py (also MoCo v3 main_lincls.py): Linear, N(0, 0.01), bias 0 |
| `linear-bn` | facebookresearch/mae main_linprobe.py (= CAE tools/run_linear.py): BatchNorm1d(affine=False, eps=1e-6) + Linear, trunc-normal 0.01 |
| `partaware` | patch_lincls.py `LinearWrapper(cls_head_type='attentive')` with `DecoderBlockSimple` + `LP_BatchNorm` |
| `cae`       | lxtGH/CAE (= Atten4Vis/CAE) models/modeling_finetune.py `AttentiveBlock` + `LP_BatchNorm` (tools/run_attentive.py) |
| `vjepa`     | facebookresearch/jepa src/models/attentive_pooler.py `AttentiveClassifier` (depth 1, complete block) |
| `capi`      | facebookresearch/capi eval_classification `AttnPoolClassifier`                  |

Two things the references do that are easy to miss, both kept here:

* PartAware and CAE call their `LP_BatchNorm` with ``is_train=True`` in every forward pass, evaluation
  included, so test accuracy is computed with the statistics of each evaluation batch
  (docs/protocols.md#attentive-batchnorm-at-evaluation).
  ``bn_eval="batch"`` (default) keeps that; ``bn_eval="running"`` uses the running statistics instead.
* CAE's `AttentiveBlock` accepts ``mlp_ratio`` but builds no MLP and adds no residual: in the code it is
  the same LayerNorm(q/k/v) + cross-attention as PartAware's `DecoderBlockSimple` (which PartAware copied
  from CAE). The two heads differ only in the query initialisation (CAE leaves it at zero, PartAware draws
  it from a truncated normal, std 0.02) and in their training recipes (probes/train.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_HEADS = ("linear", "linear-bn")
ATTENTIVE_HEADS = ("partaware", "cae", "vjepa", "capi")
HEADS = LINEAR_HEADS + ATTENTIVE_HEADS
BN_EVAL_MODES = ("batch", "running")


# --------------------------------------------------------------------------------------------- linear
class LinearHead(nn.Module):
    """PartAware `patch_lincls.py` (and MoCo v3 `main_lincls.py`): Linear on the CLS token, no normalisation."""

    input_kind = "vector"
    uses_batch_stats = False

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        self.head.weight.data.normal_(mean=0.0, std=0.01)
        self.head.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class BatchNormLinearHead(nn.Module):
    """MAE `main_linprobe.py`: ``Sequential(BatchNorm1d(D, affine=False, eps=1e-6), Linear)``.

    A standard BatchNorm: batch statistics while training, running statistics at evaluation.
    """

    input_kind = "vector"
    uses_batch_stats = True

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)  # MAE: trunc_normal_(model.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


# ---------------------------------------------------------------------------------- shared pieces
class LPBatchNorm(nn.BatchNorm1d):
    """CAE/PartAware `LP_BatchNorm(dim, affine=False)` (eps 1e-5, momentum 0.1).

    The references pass ``is_train=True`` at evaluation too, so the batch statistics normalise every
    evaluation batch; ``eval_stats="running"`` switches to the usual running statistics at evaluation.
    Running statistics are updated in training mode only.
    """

    def __init__(self, dim: int, eval_stats: str = "batch"):
        super().__init__(dim, affine=False)
        if eval_stats not in BN_EVAL_MODES:
            raise ValueError(f"bn eval mode {eval_stats!r} is not one of {BN_EVAL_MODES}")
        self.eval_stats = eval_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.eval_stats == "running":
            return super().forward(x)
        if x.shape[0] < 2:
            raise ValueError("attentive head with bn_eval='batch' needs at least 2 samples per evaluation batch "
                             "(it normalises with the batch's own statistics)")
        # batch statistics, no running-stat update (the reference's update at eval is never read back)
        return F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)


class QVBiasCrossAttention(nn.Module):
    """CAE/PartAware `CrossAttention`: separate q/k/v projections without bias, learned q and v biases
    (k gets none), scaled dot-product attention per head, output projection with bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} attention heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
        B, Nq, D = x_q.shape
        h = self.num_heads
        q = F.linear(x_q, self.q.weight, self.q_bias).reshape(B, Nq, h, D // h).transpose(1, 2)
        k = F.linear(x_k, self.k.weight).reshape(B, x_k.shape[1], h, D // h).transpose(1, 2)
        v = F.linear(x_v, self.v.weight, self.v_bias).reshape(B, x_v.shape[1], h, D // h).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)   # [B, h, Nq, Nk]
        x = (attn @ v).transpose(1, 2).reshape(B, Nq, D)
        return self.proj(x)


class CrossAttentionNoMLP(nn.Module):
    """PartAware `DecoderBlockSimple` = CAE `AttentiveBlock`: LayerNorm on q, k and v inputs (eps 1e-6;
    the position terms the reference adds are 0), then cross-attention. No residual, no MLP.

    The references also construct a `norm2_cross` LayerNorm that forward never uses; it is left out.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(dim, eps=1e-6)
        self.norm_v = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = QVBiasCrossAttention(dim, num_heads)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.cross_attn(self.norm_q(query), self.norm_k(tokens), self.norm_v(tokens))


def _init_like_cae(module: nn.Module) -> None:
    """The references' `_init_weights`: Linear weights trunc-normal 0.02, biases 0; LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------- attentive heads
class PartAwareAttentiveHead(nn.Module):
    """PartAware `LinearWrapper(cls_head_type='attentive')`:
    query (1 token, trunc-normal 0.02) -> DecoderBlockSimple(tokens) -> LP_BatchNorm -> Linear (N(0, 0.01))."""

    input_kind = "tokens"
    uses_batch_stats = True

    def __init__(self, dim: int, num_classes: int, num_heads: int, bn_eval: str = "batch"):
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cross_attn = CrossAttentionNoMLP(dim, num_heads)
        self.fc_norm = LPBatchNorm(dim, eval_stats=bn_eval)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query_token, std=0.02)
        self.cross_attn.apply(_init_like_cae)
        self.head.weight.data.normal_(mean=0.0, std=0.01)
        self.head.bias.data.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.query_token.expand(tokens.shape[0], -1, -1)
        pooled = self.cross_attn(query, tokens)[:, 0]
        return self.head(self.fc_norm(pooled))


class CAEAttentiveHead(PartAwareAttentiveHead):
    """CAE `VisionTransformer(lin_probe=True, linear_type='attentive')`: the same block, but the query
    token stays at its zero initialisation (CAE never re-initialises `query_token`); head N(0, 0.01)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, bn_eval: str = "batch"):
        super().__init__(dim, num_classes, num_heads, bn_eval)
        nn.init.zeros_(self.query_token)


class VJEPAMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VJEPACrossAttention(nn.Module):
    """V-JEPA `CrossAttention`: q = Linear(D, D), kv = Linear(D, 2D), both with bias; SDPA; proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} attention heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, n, D = q.shape
        N, h = x.shape[1], self.num_heads
        q = self.q(q).reshape(B, n, h, D // h).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, n, D))


class VJEPAAttentiveHead(nn.Module):
    """V-JEPA `AttentiveClassifier(depth=1)`: pooler = CrossAttentionBlock
    (q <- q + xattn(q, LN(x)); q <- q + MLP(LN(q))), then Linear. LayerNorm eps 1e-5 (nn.LayerNorm default,
    as V-JEPA builds it); no normalisation after the block. Init: trunc-normal 0.02 for the query and the
    pooler's Linear weights, xattn.proj and mlp.fc2 weights divided by sqrt(2); the classifier Linear keeps
    PyTorch's default init, as in the reference."""

    input_kind = "tokens"
    uses_batch_stats = False

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = VJEPACrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = VJEPAMlp(dim, int(dim * mlp_ratio))
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query_tokens, std=0.02)
        for module in (self.norm1, self.xattn, self.norm2, self.mlp):
            module.apply(_init_like_cae)
        self.xattn.proj.weight.data.div_(math.sqrt(2.0))   # _rescale_blocks, layer_id 1
        self.mlp.fc2.weight.data.div_(math.sqrt(2.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.repeat(tokens.shape[0], 1, 1)
        q = q + self.xattn(q, self.norm1(tokens))
        q = q + self.mlp(self.norm2(q))
        return self.linear(q[:, 0])


class CAPIAttentiveHead(nn.Module):
    """CAPI `AttnPoolClassifier`: a learned query used directly in head space (no q projection, no
    normalisation), kv = Linear(D, 2D), heads = D / 64, SDPA, no output projection, then Linear.
    Init: trunc-normal 0.02 for the query and both weights, biases 0."""

    input_kind = "tokens"
    uses_batch_stats = False

    def __init__(self, dim: int, num_classes: int, num_heads: int | None = None):
        super().__init__()
        if num_heads is None:
            if dim % 64:
                raise ValueError(f"capi head needs an embedding dim divisible by 64 (heads = D/64), got {dim}")
            num_heads = dim // 64
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} attention heads")
        self.num_heads = num_heads
        self.query_token = nn.Parameter(torch.empty(dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query_token, std=0.02)
        nn.init.trunc_normal_(self.kv.weight, std=0.02)
        nn.init.zeros_(self.kv.bias)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, N, D = tokens.shape
        h = self.num_heads
        q = self.query_token.expand(B, 1, -1).reshape(B, 1, h, D // h).permute(0, 2, 1, 3)
        k, v = self.kv(tokens).reshape(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)
        pooled = F.scaled_dot_product_attention(q, k, v).reshape(B, D)
        return self.linear(pooled)


# -------------------------------------------------------------------------------------------- factory
def build_head(name: str, dim: int, num_classes: int, *, num_heads: int | None = None,
               bn_eval: str = "batch") -> nn.Module:
    """The head called ``name`` for ``dim``-dimensional inputs and ``num_classes`` outputs.

    ``num_heads`` (attentive heads): the encoder's head count, as every reference uses it (PartAware
    hard-codes 12 = ViT-B). ``capi`` defaults to D/64. ``bn_eval`` applies to `partaware` and `cae`.
    """
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {HEADS}")
    if dim < 1 or num_classes < 2:
        raise ValueError(f"a head needs dim >= 1 and at least 2 classes, got dim={dim}, classes={num_classes}")
    if bn_eval not in BN_EVAL_MODES:
        raise ValueError(f"bn eval mode {bn_eval!r} is not one of {BN_EVAL_MODES}")
    if name == "linear":
        return LinearHead(dim, num_classes)
    if name == "linear-bn":
        return BatchNormLinearHead(dim, num_classes)
    if name == "capi":
        return CAPIAttentiveHead(dim, num_classes, num_heads)
    if num_heads is None:
        raise ValueError(f"head {name!r} needs num_heads (the encoder's attention head count)")
    if name == "partaware":
        return PartAwareAttentiveHead(dim, num_classes, num_heads, bn_eval)
    if name == "cae":
        return CAEAttentiveHead(dim, num_classes, num_heads, bn_eval)
    return VJEPAAttentiveHead(dim, num_classes, num_heads)
