"""Notes: a true condition that does not hold the run back (dead units while the loss falls)
is reported beside the alarms, sets no layer's status and is not among `diagnose`'s findings.
The dead units are confirmed with plain torch first."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch, StepRecord, Thresholds
from gradwatch.io.report import diagnosis_lines
from gradwatch.io.runsummary import findings_of
from gradwatch.verdict.judge import Judge
from gradwatch.verdict.view import StepView

DEAD = 20  # of the 32 hidden units, pushed to never fire


def _view(step: int, loss: float | None, share: float = 0.8) -> StepView:
    return StepView(step=step, names=["hidden", "head"], roles=["weight", "weight"],
                    norms=[1.0, 1.0], act=[None, None], values=[{"dead_frac": share}, {}],
                    head=1, total=2 ** 0.5, loss=loss)


def _judge(losses: list[float | None], th: Thresholds = Thresholds()) -> Judge:
    """Units measured dead from the 6th step on (once the loss's first window is seen)."""
    judge = Judge(th)
    for step, loss in enumerate(losses):
        v = judge.judge(_view(step, loss, 0.8 if step >= th.window else 0.0))
    judge.last = v
    return judge


def test_dead_units_while_the_loss_falls_are_a_note_without_status():
    falling = [2.0 * 0.9 ** k for k in range(20)]  # the last 5's median is 0.2x the first's
    judge = _judge(falling)
    assert judge.diagnose() == []
    (note,) = judge.diagnose(notes=True)
    assert note.kind == "dead_units" and note.layers == ("hidden",)
    assert "the loss falls" in note.note and "loss_falling=0.75" in note.note
    assert not judge.last.status.any()  # no layer flagged
    assert judge.last.findings == []  # (the note was kept at the step it first held)


@pytest.mark.parametrize("losses", [[2.0] * 20, [None] * 20, [2.0] * 10 + [1.6] * 10,
                                    [2.0] + [9.0] * 4 + [1.9] * 15])
def test_dead_units_are_an_alarm_unless_the_loss_fell_from_its_first_value_and_its_start(
        losses):
    """Flat, not passed, fallen by less than 25%, or fallen only from a spike after the
    first step (Adam at a huge learning rate): an alarm, with the layer's status."""
    judge = _judge(losses)
    assert [f.kind for f in judge.diagnose()] == ["dead_units"]
    assert judge.diagnose(notes=True) == []
    assert judge.last.status[0] != 0


def test_a_noisy_falling_loss_keeps_its_note():
    """Mixup-like losses: a falling trend times a factor that swings 0.3x-1.7x step to step,
    so the median of the last 5 swings too (0.5 to 1.1 from step 30). Once the loss has
    fallen since the units died, the note holds until the loss climbs back above where it
    was then: one note from its first step, never an alarm, no status (before, the verdict
    flipped between note and alarm with the median, and here ended an alarm)."""
    swing = [1.7, 0.3, 1.1, 0.5, 1.5, 0.4, 0.9]
    losses = [2.3] * 5 + [max(1.0, 2.0 * 0.93 ** k) * swing[k % 7] for k in range(60)]
    judge, flagged, medians = Judge(Thresholds()), [], []
    for step, loss in enumerate(losses):
        v = judge.judge(_view(step, loss, 0.8 if step >= 15 else 0.0))
        flagged.append(bool(v.status.any()))
        medians.append(judge.curve.now)
    assert max(medians[30:]) > 2 * min(medians[30:])  # the median swings
    assert judge.diagnose() == [] and not any(flagged)
    (note,) = judge.diagnose(notes=True)
    # (persistent: it holds from the 4th of the 5 recorded steps with dead units)
    assert note.kind == "dead_units" and note.first_step == 18 and note.steps == 47


def test_loss_falling_none_never_makes_a_note():
    judge = _judge([2.0 * 0.9 ** k for k in range(20)], Thresholds(loss_falling=None))
    assert [f.kind for f in judge.diagnose()] == ["dead_units"]


def test_a_note_that_turns_into_an_alarm_is_superseded():
    """Dead units while learning, then the loss climbs back above 0.75x its start: the
    condition becomes an alarm; the note is no longer listed."""
    losses = [2.0 * 0.9 ** k for k in range(20)] + [2.0] * 10
    judge = _judge(losses)
    assert [(f.kind, f.first_step) for f in judge.diagnose()] == [("dead_units", 22)]
    assert judge.diagnose(notes=True) == []


def test_an_alarm_that_turns_into_a_note_is_superseded():
    """Dead units while the loss is flat, then it falls: the alarm becomes a note that keeps
    its first step and counts every step it held; only its alarm steps carried a status."""
    losses = [2.0] * 12 + [2.0 * 0.8 ** k for k in range(1, 19)]
    judge, flagged = Judge(Thresholds()), []
    for step, loss in enumerate(losses):
        v = judge.judge(_view(step, loss, 0.8 if step >= 5 else 0.0))
        flagged.append(bool(v.status.any()))
    assert judge.diagnose() == []
    (note,) = judge.diagnose(notes=True)
    assert note.first_step == flagged.index(True) == 8 and note.steps == len(losses) - 8
    assert not flagged[-1] and sum(flagged) < note.steps


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.act, self.head = nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)
        with torch.no_grad():
            self.hidden.bias[:DEAD] = -100.0  # never fire on these inputs (checked below)

    def forward(self, x):
        return self.head(self.act(self.hidden(x)))


def _run(pass_loss: bool, steps: int = 60):
    torch.manual_seed(0)
    model = _Mlp()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if pass_loss:
                watch.note_loss(loss)
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():  # plain torch: the share of units that fire on no input
            dead = (model.act(model.hidden(x)) <= 0).all(0).double().mean().item()
    return watch, losses, dead


def test_a_trained_mlp_with_most_units_dead_ends_with_a_note_not_an_alarm():
    """Dead from the start, judged at step 12 while the loss has fallen only a little (an
    alarm, with the layer's status); once the loss fell by a quarter, a note."""
    watch, losses, dead = _run(pass_loss=True)
    assert dead >= 0.5 and losses[-1] < 0.75 * losses[0]  # plain torch: true, and it learns
    assert watch.diagnose() == []
    (note,) = watch.notes()
    assert note.kind == "dead_units" and note.layers == ("hidden",)
    assert f"worst {100 * dead:.0f}%" in note.evidence
    flagged = [r.step for r in watch.history if r.flagged]
    assert flagged and note.first_step == flagged[0] and flagged[-1] < watch.history[-1].step
    text = watch.summary()
    assert "Diagnosis: nothing wrong found." in text and "Notes: 1" in text
    assert "harmless: the loss falls" in text
    # the log keeps the note: read back, it is the live one as first kept
    records = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict())))
               for r in watch.history]
    assert findings_of(records) == []
    (logged,) = findings_of(records, notes=True)
    assert (logged.kind, logged.layers, logged.note, logged.first_step) == (
        note.kind, note.layers, note.note, note.first_step)
    assert any(line.startswith("note: dead_units") for line in diagnosis_lines(records))


def test_the_same_run_without_the_loss_is_an_alarm():
    watch, _, dead = _run(pass_loss=False)
    assert dead >= 0.5
    assert [f.kind for f in watch.diagnose()] == ["dead_units"] and watch.notes() == []


def test_loss_falling_is_validated_with_the_field_named():
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="loss_falling"):
            Thresholds(loss_falling=bad)
    with pytest.raises(TypeError, match="loss_falling"):
        Thresholds(loss_falling="0.75")


def test_the_judge_state_keeps_the_loss_curve_and_the_notes():
    """Saved mid-run through JSON and restored, the judge reaches the same notes and the
    same verdicts as one never interrupted."""
    losses = [2.0] * 12 + [2.0 * 0.8 ** k for k in range(1, 19)]
    whole = _judge(losses)
    first = _judge(losses[:15])
    resumed = Judge(Thresholds())
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for step, loss in enumerate(losses[15:], start=15):
        resumed.judge(_view(step, loss))
    assert resumed.diagnose() == whole.diagnose() == []
    assert resumed.diagnose(notes=True) == whole.diagnose(notes=True)
    assert resumed.curve.state_dict() == whole.curve.state_dict()


def test_note_alarm_note_keeps_the_first_step_and_every_step():
    """Falling, then back up (an alarm), then falling again: one note, from the step the
    condition first held, counting every step it held as either."""
    losses = [2.0 * 0.8 ** k for k in range(15)] + [2.0] * 10 + [2.0 * 0.8 ** k
                                                                  for k in range(1, 15)]
    judge, held = Judge(Thresholds(loss_rising=None)), []  # (the climb is no finding here)
    for step, loss in enumerate(losses):
        v = judge.judge(_view(step, loss, 0.8 if step >= 5 else 0.0))
        held.append(bool(v.status.any()))
    assert judge.diagnose() == [] and any(held) and not held[-1]
    (note,) = judge.diagnose(notes=True)
    assert note.first_step == 8 and note.steps == len(losses) - 8
