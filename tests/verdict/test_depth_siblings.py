"""Layers that read one input in turn (attention's query, key and value) are one depth: the
input side of the depth trend does not end between them, so query and key, whose gradients
are small by design while attention is near uniform, are never the input side alone (a tiny
BERT fine-tuned with its embeddings frozen got a false `vanishing`). A net whose gradient
truly vanishes is still found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.verdict.depth import depth_trend
from gradwatch.verdict.view import StepView


class _Attention(nn.Module):
    """Single-head self-attention: query, key and value read the same input in turn."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(h), self.key(h), self.value(h)
        a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1)
        return h + self.out(a @ v)


def test_the_forward_order_gives_query_key_and_value_one_depth():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), _Attention(8), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 2))
    with GradWatch(model) as watch:
        model(torch.randn(2, 5, 8)).sum().backward()
        watch.step()
    fwd = watch._watched.forward
    depth = {layer.name: int(d) for layer, d in zip(fwd.layers, fwd.depth)}
    assert depth["1.query"] == depth["1.key"] == depth["1.value"]
    others = [depth[n] for n in ("0", "1.query", "1.out", "2", "4")]
    assert len(set(others)) == len(others)  # a chain: each layer its own depth


def test_the_input_side_ends_at_a_depth():
    """Eight weight layers: a third is two, which would cut query and key from value."""
    names = ["q", "k", "v", "o", "up", "down", "pool", "head"]
    norms = [2e-5, 2e-5, 2e-3, 4e-3, 3e-3, 5e-3, 0.17, 0.2]
    common = dict(step=0, names=names, roles=["weight"] * 8, norms=norms, act=[None] * 8,
                  values={}, head=7, total=1.0)
    (split,) = depth_trend(StepView(**common))
    ref = (0.17 + 0.2) / 2  # the output side: the last third, two layers, either way
    assert split.starved == pytest.approx(2e-5 / ref)  # query and key alone
    (whole,) = depth_trend(StepView(**common, depth=[0, 0, 0, 3, 4, 5, 6, 7]))
    assert whole.starved == pytest.approx(2e-3 / ref)  # value is on the input side too
    assert whole.starved > 1e-3 > split.starved  # relative_vanishing's default: 1e-3


def _tiny_bert(freeze_embeddings: bool, freeze_first: bool):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128,
                                     max_position_embeddings=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    if freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)
    if freeze_first:
        model.bert.encoder.layer[0].requires_grad_(False)
    return model


@pytest.mark.parametrize("frozen", [(True, True), (True, False), (False, True)])
def test_a_tiny_bert_with_frozen_embeddings_or_first_layer_is_quiet(frozen):
    model = _tiny_bert(*frozen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(12):
            ids = torch.randint(5, 100, (32, 16), generator=g)
            labels = ((ids < 50).sum(1) > 8).long()
            opt.zero_grad()
            out = model(input_ids=ids, labels=labels)
            out.loss.backward()
            watch.note_loss(out.loss)
            opt.step()
    assert watch.diagnose() == [] and not any(r.flagged for r in watch.history)


def test_vanishing_behind_parallel_first_layers_is_still_found():
    """Three first layers read the input in turn (one depth), and a deep sigmoid stack with
    small weights after them starves all three: the whole first depth is the input side."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
            self.body = nn.Sequential(*[m for _ in range(14)
                                        for m in (nn.Linear(16, 16), nn.Sigmoid())])
            self.head = nn.Linear(16, 2)
            with torch.no_grad():
                for m in self.body:
                    if isinstance(m, nn.Linear):
                        m.weight.normal_(0, 0.1)

        def forward(self, x):
            return self.head(self.body(torch.sigmoid(self.a(x) + self.b(x) + self.c(x))))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(8):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(16, 8)),
                                        torch.randint(0, 2, (16,))).backward()
            opt.step()
    fwd = watch._watched.forward
    depth = {layer.name: int(d) for layer, d in zip(fwd.layers, fwd.depth)}
    assert depth["a"] == depth["b"] == depth["c"]
    (found,) = [f for f in watch.diagnose() if f.kind == "vanishing"]
    assert {"a", "b", "c"} <= set(found.layers)
