"""The likely cause and the remedy of each finding kind, in words and as remedy codes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ..record.records import Finding, StepRecord
    from .rules import Hit, StepView

__all__ = ["Plans", "NOTHING", "explain", "plan_text", "headline", "details", "format_findings",
           "nonfinite_message"]


Plans = tuple[tuple[str, ...], ...]


def explain(kind: str, view: StepView, hit: Hit) -> tuple[str, str, Plans]:
    """(cause, remedy, remedy plans) of a finding of ``kind`` seen at ``view``: the plans are
    the remedy's alternatives in the order the words give them, each the remedy codes to apply
    together ("a ReLU-family activation with He initialisation" is one plan of two codes).
    A note (``hit.note`` set: true but likely harmless) is explained as such."""
    if hit.note and kind == "dead_units":
        return ("units that fire on no input of the window while the model learns: a narrow "
                "bottleneck (a squeeze-excitation reduction) or features the task does not "
                "need leave them off; the rest of the layer carries the signal",
                "nothing is needed while the loss falls; if the capacity matters, a leaky "
                "ReLU-family activation, He initialisation or a lower learning rate keeps "
                "units alive", (("he_init",), ("lower_lr",)))
    if kind == "vanishing":
        if view.saturating:
            return ("saturating activations (sigmoid/tanh) multiply the gradient by their slope "
                    "(at most 0.25 for sigmoid) at every layer, so it shrinks geometrically "
                    "towards the input",
                    "use a ReLU-family activation with He initialisation, or add batch/layer "
                    "normalisation (where the model has it, check that it runs in training "
                    "mode: model.train()) or residual connections",
                    (("relu", "he_init"), ("normalization",), ("residual",)))
        return ("the weights are too small for the depth: each layer scales the gradient down "
                "(from the start: too small an initialisation; later in the run: weights that "
                "training shrank, as a strong weight decay does)",
                "initialise with He (ReLU) or Xavier/Glorot (tanh, linear) so each layer keeps "
                "the gradient's variance, or add normalisation or residual connections; if the "
                "weights shrank in training, lower the weight decay",
                (("he_init",), ("xavier_init",), ("normalization",), ("residual",)))
    if kind == "exploding" and "total" in hit.numbers:  # the absolute bound, not a trend
        return ("weights too large for the depth (each layer scales the gradient up), or a "
                "learning rate that lets them grow; or a loss on a large scale (multiplied by "
                "a constant, summed over many elements, regression targets in the hundreds), "
                "whose every gradient is as many times larger",
                "clip the gradient norm (clip=1.0), initialise with Xavier/He, add "
                "normalisation, or penalise large weights (weight decay / L2); for a loss on a "
                "large scale, a mean-reduced loss or normalised targets instead (clipping at a "
                "fixed norm then only slows training)",
                (("clip",), ("xavier_init",), ("normalization",), ("weight_decay",)))
    if kind == "exploding":
        return ("weights too large for the depth (each layer scales the gradient up), or a "
                "learning rate that lets them grow",
                "clip the gradient norm (clip=1.0), initialise with Xavier/He, add "
                "normalisation, or penalise large weights (weight decay / L2)",
                (("clip",), ("xavier_init",), ("normalization",), ("weight_decay",)))
    if kind == "divergence":
        return ("the learning rate is too high: one step changes the weights by more than "
                "their own size",
                "lower the learning rate (by 10x or more) or add a warm-up, and clip the "
                "gradient norm", (("lower_lr", "clip"), ("warmup", "clip")))
    if kind == "stalled":
        return ("the output units saturated on wrong answers, so the loss is high but its "
                "gradient is ~0 (a sigmoid/softmax output trained with squared error, or "
                "probabilities clamped before a log), or the loss does not read the model's "
                "output (a detach, a constant)",
                "compute the loss from logits (BCEWithLogitsLoss, cross_entropy) so a wrong, "
                "confident output still gets a gradient; initialise the output layer smaller "
                "(Xavier/Glorot) so it does not start saturated; check that the loss depends on "
                "the output", (("logit_loss",), ("xavier_init",)))
    if kind == "dead_units":
        return ("ReLU units pushed to always-negative inputs (a large step or a bad bias/init) "
                "output 0 and get no gradient again",
                "lower the learning rate, initialise with He, or use a leaky ReLU-family "
                "activation or normalisation before the ReLU",
                (("lower_lr",), ("he_init",), ("normalization",)))
    if kind == "zero_gradient":
        if hit.numbers.get("all") and _erased(view, hit):
            return ("every weight layer gets a gradient of exactly 0 at the optimizer step "
                    "although each got an output gradient above 0 in the backward pass: the "
                    "gradients were erased between loss.backward() and optimizer.step() "
                    "(zero_grad(set_to_none=False) after backward, clip_grad_norm_ with "
                    "max_norm=0, code that writes 0 into .grad)",
                    "look between loss.backward() and optimizer.step() for a zero_grad(), a "
                    "clip with max_norm=0 or a write to .grad", (("zero_grad",),))
        if hit.numbers.get("all"):
            cause = ("every weight layer that gets a gradient gets exactly 0 although gradient "
                     "enters the model: two factors both initialised at 0 (LoRA's A and B, a "
                     "LayerScale of 0 times a zero-initialised last layer) give each other a "
                     "gradient of 0, so neither ever moves")
        else:
            cause = ("these layers get exactly 0 while the rest get a gradient: float16 "
                     "without loss scaling underflows small gradients to 0 (the input side "
                     "first), a product of two factors both initialised at 0 (LoRA's A and "
                     "B, a LayerScale of 0 times a zero-initialised layer) cuts them off, or "
                     "the loss never reads what they output (multiplied by 0, masked out, a "
                     "branch the head ignores on this task)")
        return (cause,
                "initialise one factor of each product away from 0 (LoRA: A random, B = 0; "
                "LayerScale 1e-5, not 0); in float16, scale the loss (torch.amp.GradScaler) "
                "or use bfloat16; layers the task does not use can be frozen "
                "(requires_grad_(False))", (("nonzero_init",), ("loss_scaling",)))
    if kind == "no_gradient" and hit.numbers.get("all"):
        return ("no parameter the optimizer steps has a gradient when it steps, so nothing "
                "trains: the loss does not depend on them (computed from a detached tensor, or "
                "rebuilt from a number as in torch.tensor(loss.item(), requires_grad=True)), "
                "or the gradients are cleared between loss.backward() and optimizer.step() (a "
                "zero_grad() after backward)",
                "compute the loss from the model's output with no .item(), .detach() or "
                "torch.tensor(...) in between, and call zero_grad() before backward (or after "
                "optimizer.step()), never between backward and the step",
                (("reconnect",), ("zero_grad",)))
    if kind == "no_gradient":
        return ("the forward pass cuts these layers off the loss: a `.detach()`, a "
                "`torch.no_grad()` block, `.data`, an integer cast (argmax, .long()) or a "
                "`requires_grad_(False)` on a tensor between them and the loss, so their "
                "parameters never change while the rest of the model trains",
                "look for .detach(), torch.no_grad(), .data, an integer cast or a "
                "requires_grad_(False) you did not mean between these layers and the loss; if "
                "they are frozen on purpose, set requires_grad_(False) on their parameters or "
                "leave them out of the optimizer", (("reconnect",),))
    if kind == "unused_output":
        return ("the loss does not read these layers' output (it is computed from other "
                "outputs), so their parameters never change while the rest of the model trains",
                "if the loss should read them, compute it from that output (check which head or "
                "output the loss uses); if they are unused on purpose, freeze them "
                "(requires_grad_(False)) or leave them out of the optimizer (DDP otherwise needs "
                "find_unused_parameters=True)", (("reconnect",),))
    if kind == "not_zeroed":
        return ("optimizer.zero_grad() (or model.zero_grad()) is not called between optimizer "
                "steps, so every backward adds its gradient to all the earlier ones",
                "call optimizer.zero_grad() once per optimizer step (after optimizer.step(), "
                "or before the first backward of the next step when accumulating)",
                (("zero_grad",),))
    if kind == "not_moving":
        return ("optimizer.step() changes no weight although the gradients are not 0: the "
                "learning rate is 0 (a scheduler or warm-up that stays at 0, such as a "
                "LambdaLR factor computed with integer division, or lr=0 passed by mistake), "
                "or every update is below the weights' resolution (bfloat16 or float16 weights "
                "with a learning rate near 0 round them away)",
                "print optimizer.param_groups[i]['lr'] (and the scheduler's factor) at this "
                "step; keep the weights in float32 (autocast for the compute, or float32 master "
                "weights) when the model is bfloat16/float16",
                (("check_lr",), ("fp32_weights",)))
    if kind == "loss_rising":
        return ("the optimizer steps make the loss worse: gradients not zeroed between steps "
                "accumulate (and momentum amplifies them), the step follows the gradient "
                "instead of opposing it (maximize=True, a sign error), or the learning rate is "
                "too high for the current curvature",
                "call optimizer.zero_grad() before each backward (once per optimizer step when "
                "accumulating), check the loss's sign and maximize=, then lower the learning "
                "rate or add a warm-up and clipping",
                (("zero_grad",), ("lower_lr",), ("warmup", "clip")))
    if kind == "saturation":
        return ("pre-activations too large: sigmoid/tanh outputs pinned at their bounds where "
                "the slope is ~0",
                "initialise with Xavier/Glorot, normalise the inputs of the activation "
                "(batch/layer norm), or use a ReLU-family activation",
                (("xavier_init",), ("normalization",), ("relu",)))
    if kind == "vanishing_through_time":
        return ("the recurrence multiplies the gradient by its Jacobian at every time step, so "
                "it fades over a long sequence",
                "with a plain RNN, a gated cell (LSTM/GRU); shorter sequences or truncated "
                "backpropagation, skip/attention connections over time, and clip the gradient "
                "norm; if the task needs only the last few steps (a one-step forecaster), "
                "nothing is lost: Thresholds(time_vanishing=None) turns the check off",
                (("gated_rnn", "clip"),))
    if kind == "nonfinite_forward" and view.already == "weights":
        return (f"the weights of `{view.birth}` were already NaN/Inf when this forward pass "
                f"ran: an earlier optimizer.step() wrote them (an update that overflowed; "
                f"Adam's eps underflowing to 0 in float16, so that 0/0 = NaN; a non-finite "
                f"gradient stepped unchecked)",
                "find the step whose update_ratio went inf/NaN at that layer (on_nonfinite='skip' "
                "or 'raise' stop a non-finite gradient before it is stepped); keep the weights "
                "and the optimizer state in float32 (autocast for the compute), or raise Adam's "
                "eps (1e-4 in float16); lower the learning rate and clip the gradient norm",
                (("fp32_weights",), ("lower_lr", "clip")))
    if kind == "nonfinite_forward" and view.already == "batch":
        return (f"the batch entering the model already held NaN/Inf when it reached "
                f"`{view.birth}`, the first module given a floating input: a corrupt sample, "
                f"a normalisation that divides by a zero std, an augmentation, or the forward "
                f"code before that module",
                "check the data: assert torch.isfinite(x).all() on each batch, then look at "
                "the loading, normalisation and augmentation of the samples that fail it",
                (("check_data",),))
    if kind == "nonfinite_forward":
        return (f"an operation in `{view.birth}` produced NaN/Inf in the forward pass (an "
                f"overflow, a log of 0, a division by 0, a sqrt of a negative), so every "
                f"gradient after it is non-finite",
                f"guard the operation in `{view.birth}` (clamp its input, add an epsilon, use "
                f"log_softmax/logsumexp); if the weights blew up first, lower the learning rate",
                (("fix_op",), ("lower_lr",)))
    if kind == "nonfinite_backward":
        return (f"the backward pass of an operation at `{view.birth}` produced NaN/Inf while "
                f"the forward values were finite (e.g. sqrt or pow at 0, a custom backward)",
                f"fix the operation's gradient at `{view.birth}` (add an epsilon inside sqrt/"
                f"pow, check custom autograd Functions)", (("fix_op",),))
    if kind == "nonfinite_loss" and view.loss is not None and math.isfinite(view.loss):
        return ("the loss is finite but the gradient it sends into the model is NaN/Inf: an "
                "operation in the loss has an infinite slope where it is evaluated (a pow with "
                "an exponent below 1 at 0, as a focal loss's (1 - p) ** gamma at p = 1; a sqrt "
                "or a norm at 0), and its backward multiplies that by 0 or overflows",
                "keep the loss's pow/sqrt away from 0 ((1 - p).clamp_min(1e-6) ** gamma, "
                "sqrt(x + eps)) or write that part of the loss with a finite slope",
                (("fix_op",),))
    if kind == "nonfinite_loss":
        return ("the loss is NaN/Inf (a log of a zero probability, a division by 0, a mean "
                "over no elements when every label is ignored, a float16 loss above 65504)",
                "compute the loss from logits (cross_entropy, BCEWithLogitsLoss), clamp "
                "probabilities before log, and check the targets (a batch with no label left "
                "needs a sum, not a mean); compute a float16 model's loss in float32",
                (("fix_op",),))
    if kind == "amp_overflow":
        return ("the AMP loss scale overflows on every step: the scaled gradients do not fit "
                "in float16",
                "lower GradScaler's init_scale or growth, use bfloat16 autocast, or find the "
                "layer whose activations overflow", (("loss_scaling",),))
    return ("", "", ())


def _erased(view: StepView, hit: Hit) -> bool:
    """Whether every layer ``hit`` names got an output gradient above 0 in the backward pass:
    their parameter gradients, exactly 0 at the step, were then erased after it (a factor of
    a zero product, LoRA's A, gets an output gradient of 0 itself)."""
    where = hit.positions
    return bool(len(where)) and bool(view.act_on[where].all()) \
        and bool((view.act[where] > 0).all())


def plan_text(plans: Plans) -> str:
    """``relu+he_init, normalization, residual``: alternatives by commas, codes of one plan
    joined by ``+``."""
    return ", ".join("+".join(plan) for plan in plans)


def headline(finding: Finding) -> str:
    """``vanishing at `0`, `2` and 10 more (first at step 3, on 27 recorded step(s))``."""
    f = finding
    where = ", ".join(f"`{n}`" for n in f.layers[:4]) + (
        f" and {len(f.layers) - 4} more" if len(f.layers) > 4 else "")
    return (f"{f.kind}" + (f" at {where}" if where else "")
            + f" (first at step {f.first_step}, on {f.steps} recorded step(s))")


def details(finding: Finding) -> list[tuple[str, str]]:
    """(label, text) lines under a finding's headline: evidence, (for a note) why it looks
    harmless, likely cause, remedy."""
    f = finding
    return [("evidence", f.evidence)] + ([("harmless", f.note)] if f.note else []) + [
        ("likely cause", f.cause), ("remedy", f"{f.remedy} [{plan_text(f.plans)}]")]


NOTHING = "Diagnosis: nothing wrong found."
"""The diagnosis of a run without findings, wherever it is shown."""


def format_findings(findings: Sequence[Finding], notes: Sequence[Finding] = ()) -> str:
    """The diagnosis as text: one paragraph per finding, or one line when there is none, then
    the notes (true conditions that look harmless), one paragraph each.

    The one wording of a diagnosis: `GradWatch.summary`, the report and the trainer callbacks
    all show findings through `headline` and `details`.
    """
    lines = [f"Diagnosis: {len(findings)} finding(s)" if findings else NOTHING]
    for f in findings:
        lines.append(f"- {headline(f)}")
        lines += [f"  {label}: {text}" for label, text in details(f)]
    if notes:
        lines.append(f"Notes: {len(notes)} (true, likely harmless; no layer flagged)")
    for f in notes:
        lines.append(f"- {headline(f)}")
        lines += [f"  {label}: {text}" for label, text in details(f)]
    return "\n".join(lines)


def nonfinite_message(record: StepRecord, already: str | None = None) -> str:
    """The warning (or error) text of a step whose gradients went non-finite (``already``:
    the NaN/Inf was already in the "batch" entering the model, or in the birth module's
    "weights")."""
    where = {"forward": f"already in the batch entering {record.first_nonfinite!r}"
             if already == "batch" else f"already in the weights of {record.first_nonfinite!r} "
             f"(an earlier optimizer step wrote NaN/Inf into them)" if already == "weights"
             else f"born in the forward pass at {record.first_nonfinite!r}",
             "loss": "born in the loss"}.get(
        record.nonfinite_origin or "", f"first non-finite in the backward pass at "
                                       f"{record.first_nonfinite!r}")
    skipped = "; the optimizer step was skipped" if record.skipped else ""
    return (f"non-finite gradient at step {record.step}: {where} (total norm "
            f"{record.total_norm}){skipped}")
