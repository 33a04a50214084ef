"""Reference models against plain autograd and independent numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradwatch import GradWatch
from gradwatch.bench.chains import identity_chain_record, tanh_chain_record
from gradwatch.bench.nets import DeepMLP, IdentityChain, MnistResNet, TanhChain


@pytest.mark.parametrize("c", [2.0, 0.5])
def test_identity_chain_autograd_ratio_is_c(c):
    model = IdentityChain(100, width=4, c=c)
    x = torch.ones(1, 4)
    outs = []
    for layer in model.layers:
        x = layer(x)
        x.retain_grad()
        outs.append(x)
    x.sum().backward()
    norms = [o.grad.double().norm().item() for o in outs]
    ratios = np.array(norms[:-1]) / np.array(norms[1:])
    np.testing.assert_allclose(ratios, c, rtol=1e-5)
    np.testing.assert_allclose(x.detach().double().numpy(), c ** 100, rtol=1e-5)


@pytest.mark.parametrize("c", [2.0, 0.5])
def test_identity_chain_gradwatch_act_ratio_is_c(c):
    rec = identity_chain_record(c)
    acts = [s.act_norm for s in rec.layers.values()]
    assert len(acts) == 100 and all(a is not None and math.isfinite(a) for a in acts)
    ratios = np.array(acts[:-1]) / np.array(acts[1:])
    np.testing.assert_allclose(ratios, c, rtol=1e-5)
    # Each weight gradient is g_k x_{k-1}^T with ‖·‖ = (2 c^(99-k)) (2 c^k) = 4 c^99.
    norms = [s.norm for s in rec.layers.values()]
    np.testing.assert_allclose(norms, 4 * c ** 99, rtol=1e-5)


def _numpy_tanh_chain(w: list[float]) -> tuple[list[float], list[float], list[float]]:
    """|dy/dw_i|, |dy/dh_i| and |dy/dz_i| of y = tanh(w_n ... tanh(w_1 · 1.0)) by hand in
    float64, with z_i = w_i h_(i-1) the output of linear layer i and h_i = tanh(z_i)."""
    h = [1.0]
    for wi in w:
        h.append(math.tanh(wi * h[-1]))
    dh = [0.0] * len(w)  # dy/dh_i, h_i the output of layer i
    dw = [0.0] * len(w)
    dzs = [0.0] * len(w)
    upstream = 1.0
    for i in reversed(range(len(w))):
        dh[i] = upstream
        dz = upstream * (1.0 - h[i + 1] ** 2)
        dzs[i] = dz
        dw[i] = dz * h[i]
        upstream = dz * w[i]
    return [abs(v) for v in dw], [abs(v) for v in dh], [abs(v) for v in dzs]


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_tanh_chain_matches_numpy(scale, seed):
    model, rec = tanh_chain_record(scale, seed)
    dw, dh, dz = _numpy_tanh_chain(model.weights())
    # The chain itself, in float64 autograd, is the numpy computation to 1e-9.
    chain = model.double()
    chain.zero_grad()
    h = torch.ones(1, 1, dtype=torch.float64)
    outs = []
    for layer in chain.layers:
        h = torch.tanh(layer(h))
        h.retain_grad()
        outs.append(h)
    h.sum().backward()
    np.testing.assert_allclose([abs(l.weight.grad.item()) for l in chain.layers], dw, rtol=1e-9)
    np.testing.assert_allclose([abs(o.grad.item()) for o in outs], dh, rtol=1e-9)
    # gradwatch's float32 record (act_norm is the gradient w.r.t. the Linear's output z_i).
    np.testing.assert_allclose([s.norm for s in rec.layers.values()], dw, rtol=1e-4)
    np.testing.assert_allclose([s.act_norm for s in rec.layers.values()], dz, rtol=1e-4)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_tanh_chain_gradwatch_float64_matches_numpy(scale):
    model, rec = tanh_chain_record(scale, 1, dtype=torch.float64)
    dw, _, dz = _numpy_tanh_chain(model.weights())
    np.testing.assert_allclose([s.norm for s in rec.layers.values()], dw, rtol=1e-9)
    np.testing.assert_allclose([s.act_norm for s in rec.layers.values()], dz, rtol=1e-9)


def test_tanh_chain_gradwatch_equals_float32_autograd():
    model, rec = tanh_chain_record(0.5, 2)
    model.zero_grad()
    model(torch.ones(1, 1)).sum().backward()
    np.testing.assert_allclose([s.norm for s in rec.layers.values()],
                               [abs(l.weight.grad.item()) for l in model.layers], rtol=1e-6)


def test_tanh_chain_weights_follow_scale():
    g = torch.Generator().manual_seed(3)
    model = TanhChain(20, scale=1.5, generator=g)
    ref = torch.Generator().manual_seed(3)
    expected = torch.cat([torch.randn(1, generator=ref) for _ in range(20)]) * 1.5
    np.testing.assert_allclose(model.weights(), expected.tolist(), rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(activation="sigmoid"), dict(activation="relu", init="he",
                                                                   batch_norm=True),
                                dict(activation="tanh", init="small_normal", residual=True),
                                dict(activation="linear", init="xavier")])
def test_deep_mlp_shapes_and_names(kw):
    model = DeepMLP(3, width=16, **kw)
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)
    with GradWatch(model) as watch:
        torch.nn.functional.cross_entropy(model(torch.rand(5, 784)), torch.arange(5)).backward()
        rec = watch.step()
    assert list(rec.layers)[0] == "input" and list(rec.layers)[-1] == "output"
    assert "hidden.2.linear" in rec.layers
    assert ("hidden.0.bn" in rec.layers) == kw.get("batch_norm", False)


def test_he_and_small_normal_init_scales():
    torch.manual_seed(0)
    he = DeepMLP(2, width=512, activation="relu", init="he")
    small = DeepMLP(2, width=512, init="small_normal")
    assert he.hidden[0].linear.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert small.hidden[0].linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert he.hidden[0].linear.bias.abs().max().item() == 0


def test_resnet_shape_and_gradwatch():
    model = MnistResNet()
    with GradWatch(model) as watch:
        torch.nn.functional.cross_entropy(model(torch.rand(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        rec = watch.step()
    assert "blocks.2.proj.0" in rec.layers and "stem" in rec.layers and "output" in rec.layers


@pytest.mark.parametrize("bad", [dict(activation="gelu"), dict(init="orthogonal"), dict(depth=0)])
def test_bad_options_raise(bad):
    kw = dict(depth=2) | bad
    with pytest.raises(ValueError):
        DeepMLP(**kw)


def test_keras_inits_match_their_formulas():
    from gradwatch.bench.nets import he_normal_

    torch.manual_seed(0)
    mlp = DeepMLP(1, width=256)  # Keras Dense defaults: Glorot-uniform kernel, zero bias
    bound = math.sqrt(6 / (784 + 256))
    w = mlp.input.weight
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
    assert w.std().item() == pytest.approx(math.sqrt(2 / (784 + 256)), rel=0.02)
    assert mlp.input.bias.abs().max().item() == 0
    w = he_normal_(torch.empty(256, 64, 3, 3))  # fan_in 576
    sigma = math.sqrt(2 / 576)
    assert w.std().item() == pytest.approx(sigma, rel=0.02)
    assert w.abs().max().item() <= 2 * sigma / 0.87962566103423978 + 1e-7


def test_resnet_follows_the_tutorial():
    torch.manual_seed(0)
    model = MnistResNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs[:1]] == [64] and convs[0].kernel_size == (7, 7)
    assert convs[0].stride == (2, 2) and model.pool.kernel_size == 3 and model.pool.stride == 2
    assert [b.conv1.out_channels for b in model.blocks] == [64, 64, 128, 128, 256, 256]
    assert [b.conv1.stride[0] for b in model.blocks] == [1, 1, 2, 1, 2, 1]
    for c in convs:  # he_normal: truncated at 2σ/0.8796 with σ = √(2/fan_in)
        sigma = math.sqrt(2 / c.weight[0].numel())
        assert c.weight.abs().max().item() <= 2 * sigma / 0.87962566103423978 + 1e-7
        assert c.bias is None or c.bias.abs().max().item() == 0
    big = model.blocks[5].conv2.weight  # 256·256·9 weights: a tight std estimate
    assert big.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    fan = model.output.in_features + model.output.out_features
    assert model.output.weight.abs().max().item() <= math.sqrt(6 / fan)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
