"""Every head against a hand-written NumPy (float64) computation of its reference's forward pass, on fixed
random weights: explicit per-head matmuls and softmax, LayerNorm and BatchNorm written out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes.heads import HEADS, build_head

D, HEADS_N, C = 16, 4, 3


def randomize(module: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Overwrite every parameter with N(0, 0.5) (LayerNorm weights around 1) and return them as float64 arrays."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            value = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5
            if name.endswith("weight") and p.ndim == 1:   # LayerNorm gains
                value = 1.0 + value * 0.2
            p.copy_(value)
            params[name] = value.numpy()
    return params


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attend(q, k, v, heads):
    """q [D], k/v [N, D]: per-head softmax(q_h . k_h / sqrt(dh)) v_h, heads concatenated."""
    dh = q.shape[-1] // heads
    out = []
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        weights = softmax(k[:, s] @ q[s] / math.sqrt(dh))
        out.append(weights @ v[:, s])
    return np.concatenate(out)


def batch_norm_batch_stats(x, eps):
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)   # biased, as batch normalisation uses
    return (x - mean) / np.sqrt(var + eps)


def reference_partaware_pooled(tokens, P):
    """DecoderBlockSimple / CAE AttentiveBlock for one query, on every sample: [B, D] before the BatchNorm."""
    out = []
    for x in tokens:
        q_in = layer_norm(P["query_token"][0, 0], P["cross_attn.norm_q.weight"], P["cross_attn.norm_q.bias"], 1e-6)
        k_in = layer_norm(x, P["cross_attn.norm_k.weight"], P["cross_attn.norm_k.bias"], 1e-6)
        v_in = layer_norm(x, P["cross_attn.norm_v.weight"], P["cross_attn.norm_v.bias"], 1e-6)
        q = P["cross_attn.cross_attn.q.weight"] @ q_in + P["cross_attn.cross_attn.q_bias"]
        k = k_in @ P["cross_attn.cross_attn.k.weight"].T                      # no k bias
        v = v_in @ P["cross_attn.cross_attn.v.weight"].T + P["cross_attn.cross_attn.v_bias"]
        o = attend(q, k, v, HEADS_N)
        out.append(P["cross_attn.cross_attn.proj.weight"] @ o + P["cross_attn.cross_attn.proj.bias"])
    return np.stack(out)


def tokens_batch(b=6, n=5, seed=1):
    return torch.randn(b, n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", ["partaware", "cae"])
def test_partaware_and_cae_heads_match_reference_with_batch_statistics_at_eval(name):
    head = build_head(name, D, C, num_heads=HEADS_N).double()
    P = randomize(head)
    x = tokens_batch()
    head.eval()   # evaluation mode: the reference still normalises with the batch's statistics
    got = head(x).detach().numpy()
    pooled = reference_partaware_pooled(x.numpy(), P)
    want = batch_norm_batch_stats(pooled, 1e-5) @ P["head.weight"].T + P["head.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)

    # batch statistics: the prediction for sample 0 changes with the other members of the batch
    alone = head(x[:3]).detach().numpy()
    assert np.abs(alone[0] - got[0]).max() > 1e-3


@pytest.mark.parametrize("name", ["partaware", "cae"])
def test_running_statistics_mode_is_independent_of_batch_composition(name):
    head = build_head(name, D, C, num_heads=HEADS_N, bn_eval="running").double()
    P = randomize(head)
    x = tokens_batch()
    head.train()
    head(x)                     # one training pass updates the running statistics (momentum 0.1)
    pooled = reference_partaware_pooled(x.numpy(), P)
    running_mean = 0.1 * pooled.mean(0)
    running_var = 0.9 * 1.0 + 0.1 * pooled.var(0, ddof=1)     # unbiased variance enters the running estimate
    head.eval()
    got = head(x).detach().numpy()
    want = (pooled - running_mean) / np.sqrt(running_var + 1e-5) @ P["head.weight"].T + P["head.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(head(x[:3]).detach().numpy(), got[:3], rtol=1e-12, atol=1e-12)


def test_partaware_and_cae_initialisation():
    torch.manual_seed(0)
    pa = build_head("partaware", 768, 4, num_heads=12)
    cae = build_head("cae", 768, 4, num_heads=12)
    assert abs(pa.query_token.std().item() - 0.02) < 0.003   # trunc-normal, cut at +-2 absolute as timm does
    assert torch.count_nonzero(cae.query_token) == 0           # CAE never re-initialises its query token
    for head in (pa, cae):
        assert abs(head.head.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(head.head.bias) == 0
        assert abs(head.cross_attn.cross_attn.q.weight.std().item() - 0.02) < 0.001
        assert torch.count_nonzero(head.cross_attn.cross_attn.q_bias) == 0
        assert torch.count_nonzero(head.cross_attn.cross_attn.proj.bias) == 0
        assert not hasattr(head.cross_attn.cross_attn.k, "bias") or head.cross_attn.cross_attn.k.bias is None
        assert not head.fc_norm.affine and head.fc_norm.eps == 1e-5


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_vjepa_head_matches_reference():
    head = build_head("vjepa", D, C, num_heads=HEADS_N).double().eval()
    P = randomize(head)
    x = tokens_batch()
    got = head(x).detach().numpy()
    want = []
    for t in x.numpy():
        q0 = P["query_tokens"][0, 0]
        kv_in = layer_norm(t, P["norm1.weight"], P["norm1.bias"], 1e-5)       # keys/values normalised, query not
        q = P["xattn.q.weight"] @ q0 + P["xattn.q.bias"]
        kv = kv_in @ P["xattn.kv.weight"].T + P["xattn.kv.bias"]
        k, v = kv[:, :D], kv[:, D:]
        q1 = q0 + P["xattn.proj.weight"] @ attend(q, k, v, HEADS_N) + P["xattn.proj.bias"]   # residual
        h = layer_norm(q1, P["norm2.weight"], P["norm2.bias"], 1e-5)
        h = P["mlp.fc2.weight"] @ gelu(P["mlp.fc1.weight"] @ h + P["mlp.fc1.bias"]) + P["mlp.fc2.bias"]
        want.append(P["linear.weight"] @ (q1 + h) + P["linear.bias"])   # residual, no norm after
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-9, atol=1e-10)
    # no batch statistics anywhere: a sample's output does not depend on its batch
    np.testing.assert_allclose(head(x[:2]).detach().numpy(), got[:2], rtol=1e-12, atol=1e-12)


def test_vjepa_initialisation_rescales_projection_and_fc2():
    torch.manual_seed(0)
    head = build_head("vjepa", 256, 5, num_heads=4)
    target = 0.02 / math.sqrt(2.0)
    assert abs(head.xattn.proj.weight.std().item() - target) < 0.05 * target
    assert abs(head.mlp.fc2.weight.std().item() - target) < 0.05 * target
    assert abs(head.mlp.fc1.weight.std().item() - 0.02) < 0.001
    assert abs(head.norm1.eps - 1e-5) < 1e-12 and head.mlp.fc1.out_features == 1024


def test_capi_head_matches_reference():
    dim = 128                      # heads = dim / 64 = 2
    head = build_head("capi", dim, C).double().eval()
    assert head.num_heads == 2
    P = randomize(head)
    x = torch.randn(3, 7, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = head(x).detach().numpy()
    want = []
    for t in x.numpy():
        kv = t @ P["kv.weight"].T + P["kv.bias"]
        pooled = attend(P["query_token"], kv[:, :dim], kv[:, dim:], 2)     # query used directly, no proj
        want.append(P["linear.weight"] @ pooled + P["linear.bias"])
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-9, atol=1e-10)


def test_linear_head_and_bn_linear_head():
    torch.manual_seed(0)
    lin = build_head("linear", 768, 4)
    assert abs(lin.head.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(lin.head.bias) == 0
    lin = build_head("linear", D, C).double()
    P = randomize(lin)
    x = torch.randn(5, D, dtype=torch.float64)
    np.testing.assert_allclose(lin(x).detach().numpy(), x.numpy() @ P["head.weight"].T + P["head.bias"], rtol=1e-12)

    bn = build_head("linear-bn", D, C).double()
    P = randomize(bn)
    assert not bn.norm.affine and bn.norm.eps == 1e-6
    bn.train()
    got = bn(x).detach().numpy()
    np.testing.assert_allclose(got, batch_norm_batch_stats(x.numpy(), 1e-6) @ P["head.weight"].T + P["head.bias"],
                               rtol=1e-9)
    bn.eval()   # MAE's BatchNorm is a standard one: running statistics at evaluation
    rm, rv = 0.1 * x.numpy().mean(0), 0.9 + 0.1 * x.numpy().var(0, ddof=1)
    np.testing.assert_allclose(bn(x).detach().numpy(), (x.numpy() - rm) / np.sqrt(rv + 1e-6) @ P["head.weight"].T
                               + P["head.bias"], rtol=1e-9)


def test_bad_head_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("mlp", D, C)
    with pytest.raises(ValueError, match="num_heads"):
        build_head("partaware", D, C)
    with pytest.raises(ValueError, match="divisible"):
        build_head("partaware", 64, C, num_heads=12)
    with pytest.raises(ValueError, match="divisible by 64"):
        build_head("capi", 96, C)
    with pytest.raises(ValueError, match="bn eval"):
        build_head("partaware", D, C, num_heads=4, bn_eval="frozen")
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_head("linear", D, 1)
    head = build_head("partaware", D, C, num_heads=HEADS_N).eval()
    with pytest.raises(ValueError, match="at least 2 samples"):
        head(torch.randn(1, 5, D))
    assert set(HEADS) == {"linear", "linear-bn", "partaware", "cae", "vjepa", "capi"}
