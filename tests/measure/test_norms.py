"""Norm math against torch.linalg.vector_norm and float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from gradwatch.measure.norms import combine, exact_norm, per_tensor_norms, repair_norms, tensor_norm
from reference import norm


def test_per_tensor_norms_match_vector_norm_across_dtypes():
    torch.manual_seed(0)
    grads = [torch.randn(7, 3), torch.randn(5).double(), torch.randn(4, 4).bfloat16(),
             torch.randn(3).half(), torch.zeros(0), torch.randn(2, 3, 4)]
    norms = per_tensor_norms(grads)
    assert norms.dtype == torch.float64 and norms.shape == (len(grads),)  # a float64 grad is in
    for n, g in zip(norms.tolist(), grads):
        assert n == pytest.approx(norm([g]), rel=1e-6, abs=0)
    assert per_tensor_norms(grads[2:]).dtype == torch.float32
    assert per_tensor_norms(grads[1:2]).item() == pytest.approx(norm(grads[1:2]), rel=1e-14)


def test_sparse_gradient_norm_is_norm_of_coalesced_values():
    i = torch.tensor([[0, 0, 2], [1, 1, 0]])  # (0,1) twice: coalescing sums them
    v = torch.tensor([3.0, 1.0, 3.0])
    g = torch.sparse_coo_tensor(i, v, (3, 3))
    assert per_tensor_norms([g]).item() == pytest.approx(5.0)
    assert exact_norm(g) == pytest.approx(5.0)


@pytest.mark.parametrize("value", [1e30, 1e-30, 3e38, 1e-44])
def test_repair_keeps_norms_right_where_fp32_squares_overflow_or_underflow(value):
    g = torch.full((10,), value, dtype=torch.float32)
    raw = per_tensor_norms([g]).tolist()
    expected = math.sqrt(10) * float(g[0])
    fixed = repair_norms(raw, [g])
    assert fixed[0] == pytest.approx(expected, rel=1e-12)
    assert tensor_norm(g) == pytest.approx(expected, rel=1e-12)


def test_repair_leaves_healthy_norms_alone_and_keeps_nonfinite():
    g = torch.tensor([3.0, 4.0])
    bad = torch.tensor([1.0, float("nan")])
    assert repair_norms([5.0], [g]) == [5.0]
    assert math.isnan(repair_norms([float("nan")], [bad])[0])
    inf = torch.tensor([1.0, float("inf")])
    assert repair_norms([float("inf")], [inf])[0] == math.inf


def test_combine_is_l2_of_norms_without_overflow():
    assert combine([3.0, 4.0]) == 5.0
    assert combine([]) == 0.0
    assert combine([1e200, 1e200]) == pytest.approx(math.sqrt(2) * 1e200)
    assert combine([1e-200, 1e-200]) == pytest.approx(math.sqrt(2) * 1e-200)
    assert combine([math.inf, 1.0]) == math.inf
    assert math.isnan(combine([math.nan, math.inf]))
    xs = torch.rand(50, dtype=torch.float64)
    assert combine(xs.tolist()) == pytest.approx(torch.linalg.vector_norm(xs).item(), rel=1e-14)


def test_exact_norms_and_repair_match_float64_torch_in_one_batch():
    """Every norm outside fp32's safe range is redone in float64 (one batched call); the
    healthy ones are kept as given."""
    from gradwatch.measure.norms import exact_norms, repair_norms

    torch.manual_seed(0)
    grads = [torch.randn(5, 3) * s for s in (1e-25, 1.0, 1e25, 1e-30, 3.0)]
    fp32 = torch.stack(torch._foreach_norm(grads, 2)).tolist()
    ref = [torch.linalg.vector_norm(g.double()).item() for g in grads]
    assert exact_norms(grads) == pytest.approx(ref, rel=1e-12)
    fixed = repair_norms(fp32, grads)
    assert fixed == pytest.approx(ref, rel=1e-6)
    assert fixed[1] == fp32[1] and fixed[4] == fp32[4]  # healthy: untouched
    assert fp32[0] < 1e-18 and fp32[2] == float("inf")  # (what needed the repair)


def test_foreach_norm64_equals_torch_float64_norms_for_small_large_and_odd_tensors():
    """The segment path (small CPU tensors summed together in float64) against
    ``torch.linalg.vector_norm(t, dtype=float64)`` per tensor: small and large, fp16, a
    non-contiguous view, values whose float32 squares underflow or overflow."""
    from gradwatch.measure.batched import SEGMENT_MAX, foreach_norm64

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(16, generator=g) * 1e-25, torch.randn(16, 16, generator=g),
               torch.randn(SEGMENT_MAX, generator=g) * 1e22,
               torch.randn(SEGMENT_MAX + 1, generator=g),  # past the segment path
               torch.randn(8, 8, generator=g).t(),  # non-contiguous
               torch.randn(30, generator=g).half(), torch.zeros(5)]
    tensors += [torch.randn(k + 1, generator=g) for k in range(10)]
    got = foreach_norm64(tensors)
    want = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors])
    assert got.dtype == torch.float64 and got.shape == (len(tensors),)
    assert torch.allclose(got, want, rtol=1e-14, atol=0)
    few = tensors[:3]  # below the batch worth a segment sum: the per-tensor kernel
    assert torch.allclose(foreach_norm64(few), want[:3], rtol=1e-14, atol=0)


def _grouped(tensors):
    """`grouped_norms` once the layout was met (the first time it declines: see `_planned`)."""
    from gradwatch.measure.batched import grouped_norms

    grouped_norms(tensors)
    return grouped_norms(tensors)


@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_cpu_norms_are_foreach_norm_bit_for_bit(threads):
    """Tensors of one shape are reduced by rows of a stacked matrix on the CPU; every norm must
    be the bits ``torch._foreach_norm`` (so ``clip_grad_norm_``) gives: shapes repeated and
    single, sizes around the vector width and `GROUP_MAX`, scales near fp32's limits, NaN/inf,
    float64, and layouts that must not be grouped (channels-last, transposed)."""
    from gradwatch.measure.batched import GROUP_MAX

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(threads)
        shapes = [(16, 16), (16,), (7, 5), (1,), (3,), (33,), (64, 16), (10, 10, 3), (255,),
                  (GROUP_MAX,), (GROUP_MAX + 1,), (2, 3, 3, 3), (4, 4)]
        for dtype in (torch.float32, torch.float64):
            tensors = []
            for k in range(160):
                shape = shapes[(k * 7) % len(shapes)] if k % 11 else shapes[k % 3]
                scale = 10.0 ** float(torch.randint(-20, 20, (), generator=gen))
                tensors.append(torch.randn(shape, generator=gen, dtype=dtype) * scale)
            tensors[5] = tensors[5].clone().fill_(0.0)
            tensors[9][0] = math.nan
            tensors[17][-1] = math.inf
            tensors[23] = torch.randn(8, 4, 3, 3, dtype=dtype).to(
                memory_format=torch.channels_last)
            tensors[24] = torch.randn(2, 3, 3, 3, dtype=dtype).to(
                memory_format=torch.channels_last)
            want = torch.stack(torch._foreach_norm(tensors, 2))
            for got in (per_tensor_norms(tensors), _grouped(tensors)):
                assert got is not None
                assert got.dtype == dtype
                assert torch.equal(got.isnan(), want.isnan())
                assert torch.equal(got.nan_to_num(), want.nan_to_num())
            # contiguous only: the grouped path itself
            dense = [t.contiguous() for t in tensors if t.isfinite().all()]
            want = torch.stack(torch._foreach_norm(dense, 2))
            assert torch.equal(_grouped(dense), want)
            # views into one flat buffer at odd offsets (DDP's gradient_as_bucket_view)
            flat = torch.randn(20_000, generator=gen, dtype=dtype)
            starts = [0, 3, 300, 301, 1000, 1257, 5001, 9999]
            views = [flat[s:s + 256].view(16, 16) for s in starts]
            assert torch.equal(_grouped(views), torch.stack(torch._foreach_norm(views, 2)))
            transposed = [torch.randn(16, 12, dtype=dtype).t() for _ in range(6)]
            assert torch.equal(_grouped(transposed),
                               torch.stack(torch._foreach_norm(transposed, 2)))
    finally:
        torch.set_num_threads(old)


def test_grouped_norms_give_clip_grad_norms_total_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(16, 16) for _ in range(30)))
    model(torch.randn(4, 16)).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    total = torch.linalg.vector_norm(per_tensor_norms(grads))
    assert torch.equal(total, torch.nn.utils.get_total_norm(grads))
    assert torch.equal(total, torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))


def test_grouped_norms_declines_what_it_cannot_reduce_bit_for_bit():
    a = [torch.randn(4, 4) for _ in range(6)]
    assert _grouped(a + [torch.randn(4, 4, dtype=torch.float64)]) is None  # mixed dtypes
    assert _grouped([t.bfloat16() for t in a]) is None  # reduced in another dtype
    assert _grouped(a + [torch.randn(4, 4).to_sparse()]) is None
    assert _grouped(a + [torch.zeros(0)]) is None
    assert _grouped([]) is None
    assert _grouped([torch.nn.Parameter(t) for t in a]) is None  # a subclass
    # per_tensor_norms still handles all of these, through its general path
    mixed = a + [torch.randn(4, 4).to_sparse(), torch.zeros(0)]
    want = [torch.linalg.vector_norm(t.to_dense() if t.is_sparse else t).item() for t in mixed]
    assert per_tensor_norms(mixed).tolist() == pytest.approx(want, rel=1e-6)


def test_foreach_norm64_laid_out_by_shape_is_the_plain_flat_sum_bit_for_bit():
    """Laying the small tensors out by shape changes where each sits in the float64 buffer,
    not its segment's sum: the same bits as one flat buffer in the tensors' order, and as any
    permutation of the tensors."""
    from gradwatch.measure.batched import _flat_norm64, foreach_norm64

    gen = torch.Generator().manual_seed(3)
    shapes = [(16, 16), (16,), (7, 5), (1,), (33,), (32, 32), (1025,), (10, 10, 3), (5,)]
    tensors = []
    for k in range(90):
        t = torch.randn(shapes[(k * 5) % len(shapes)], generator=gen)
        t = t * 10.0 ** float(torch.randint(-30, 30, (), generator=gen))
        if k % 7 == 3 and t.dim() == 2:
            t = t.t()  # non-contiguous: read in logical order either way
        tensors.append(t.bfloat16() if k % 11 == 5 else t)
    first = foreach_norm64(tensors)  # a layout met for the first time: the flat path
    got = foreach_norm64(tensors)  # met before: laid out by shape
    assert torch.equal(got, _flat_norm64(tensors)) and torch.equal(got, first)
    perm = torch.randperm(len(tensors), generator=gen).tolist()
    shuffled = [tensors[i] for i in perm]
    foreach_norm64(shuffled)
    assert torch.equal(foreach_norm64(shuffled), got[perm])


def test_layouts_that_change_every_step_are_not_planned():
    """Gradients that come and go (experts routed differently each step) give a new layout at
    every step: it is looked up, not planned, and the plans kept stay bounded."""
    from gradwatch.measure import batched

    gen = torch.Generator().manual_seed(4)
    pool = [torch.randn(8, 8, generator=gen) for _ in range(40)]
    planned = len(batched._PLANS)
    for step in range(30):  # a different subset, never seen before, each step
        subset = [t for k, t in enumerate(pool) if (k * 7 + step) % 5 != 0][: 20 + step % 7]
        subset = subset[step % 3:] + [torch.randn(step + 1, generator=gen)]
        assert torch.equal(per_tensor_norms(subset), torch.stack(torch._foreach_norm(subset, 2)))
    assert len(batched._PLANS) == planned  # each layout is new (its last tensor has a new size)
    assert len(batched._SEEN) <= 257


def test_layouts_are_looked_up_by_size_and_a_shape_changed_at_equal_size_is_still_exact():
    """Plans are looked up by the tensors' entry counts: tensors of one size but another shape
    at the same places (a (16, 16) weight where a (256,) one was, in one group or split
    across two) still get `_foreach_norm`'s bits, and float64 norms the flat path's."""
    from gradwatch.measure.batched import _flat_norm64, foreach_norm64

    gen = torch.Generator().manual_seed(5)
    first = [(16, 16), (256,), (16, 16), (8, 32), (4, 16), (64,), (4, 16), (3,)] * 4
    later = [(256,), (16, 16), (16, 16), (16, 16), (16, 4), (64,), (64,), (3,)] * 4
    together = [(16, 16)] * 16 + [(4, 16)] * 16
    apart = [(256,)] * 16 + [(64,)] * 16
    for a, b in ((first, later), (together, apart), (apart, together)):
        for shapes in (a, a, b, b, a):  # planned at the second call, then met with b's shapes
            tensors = [torch.randn(s, generator=gen) * 10.0 ** float(
                torch.randint(-25, 25, (), generator=gen)) for s in shapes]
            assert torch.equal(per_tensor_norms(tensors),
                               torch.stack(torch._foreach_norm(tensors, 2)))
            assert torch.equal(foreach_norm64(tensors), _flat_norm64(tensors))
