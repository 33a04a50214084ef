"""A vanishing alarm that held on the first steps only, in a run whose loss then fell, is a
note: a fine-tune whose trainable layers start behind small-by-design dense layers (a BERT of
hidden 32 with its embeddings and first layer frozen) climbs through the bound. While the
condition holds, or when the loss does not fall, the alarm stands."""

from __future__ import annotations

import pytest

from gradwatch import Thresholds
from gradwatch.verdict.judge import Judge
from gradwatch.verdict.view import StepView

NAMES = ["in0", "in1", "mid0", "mid1", "out0", "head"]


def _view(step: int, input_side: float, loss: float) -> StepView:
    norms = [input_side, input_side, 0.05, 0.05, 1.0, 1.0]
    return StepView(step=step, names=NAMES, roles=["weight"] * 6, norms=norms,
                    act=[None] * 6, values={}, head=5, total=2.0, loss=loss)


def _judge(ratios: list[float], losses: list[float]) -> Judge:
    judge = Judge(Thresholds())
    for step, (r, loss) in enumerate(zip(ratios, losses)):
        judge.judge(_view(step, r, loss))
    return judge


def test_an_early_vanishing_that_clears_while_the_loss_falls_is_a_note():
    ratios = [5e-4] * 6 + [5e-3] * 14  # below relative_vanishing=1e-3 on steps 0-5 only
    losses = [0.7] * 8 + [0.7 * 0.8 ** k for k in range(1, 13)]
    judge = _judge(ratios, losses)
    assert judge.diagnose() == []
    (note,) = judge.diagnose(notes=True)
    assert note.kind == "vanishing" and note.first_step == 3  # the alarm's first step
    assert "held on the first steps only and the loss fell" in note.note


@pytest.mark.parametrize("case", ["flat_loss", "still_vanishing", "brief_clear"])
def test_the_alarm_stands_otherwise(case):
    ratios = [5e-4] * 6 + [5e-3] * 14
    losses = [0.7] * 8 + [0.7 * 0.8 ** k for k in range(1, 13)]
    if case == "flat_loss":
        losses = [0.7] * 20
    elif case == "still_vanishing":
        ratios = [5e-4] * 20
    else:  # clear for 3 steps (< persistence), then vanishing again
        ratios = [5e-4] * 6 + [5e-3] * 3 + [5e-4] * 11
    judge = _judge(ratios, losses)
    assert [f.kind for f in judge.diagnose()] == ["vanishing"]
    assert judge.diagnose(notes=True) == []
