"""Integrations against the real libraries: TensorBoard event files, Lightning fit, HF Trainer."""

from __future__ import annotations

import copy
import csv
import math
import os

import pytest
import torch
from torch import nn

from conftest import batch, loss_of, mlp
from gradwatch import GradWatch, StepRecord
from gradwatch.record.records import LayerStat


def _layer_norms(model: nn.Module) -> dict[str, float]:
    """Plain-torch oracle: L2 norm of each module's own parameter gradients (float64); a shared
    (tied) parameter belongs to the first module that owns it."""
    out, seen = {}, set()
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False)
                  if p.grad is not None and id(p) not in seen]
        seen.update(map(id, params))
        grads = [p.grad.double().flatten() for p in params]
        if grads:
            out[name] = torch.linalg.vector_norm(torch.cat(grads)).item()
    return out


def _total(model: nn.Module) -> float:
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()


# ------------------------------------------------------------------------------------ TensorBoard
def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_read_back_equal_the_records(tmp_path):
    pytest.importorskip("tensorboard")
    from gradwatch.integrations.tensorboard import TensorBoardLogger

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = TensorBoardLogger(tmp_path / "tb")
    with GradWatch(model, optimizer=opt, clip=0.5, loggers=[tb]) as watch:
        for i in range(4):
            opt.zero_grad()
            loss_of(model, *batch(seed=i)).backward()
            opt.step()
        records = watch.history
    scalars = _scalars(tmp_path / "tb")
    names = list(records[0].layers)
    stats = {(k, n) for r in records for n, s in r.layers.items()
             for k, v in s.numbers().items() if v is not None}  # every declared statistic
    assert {("norm", n) for n in names} | {("act_norm", n) for n in names} <= stats
    assert ("update_ratio", names[0]) in stats  # optimizer= measures it across the step
    assert set(scalars) == ({"gradwatch/total_norm", "gradwatch/clip_coef",
                             "gradwatch/flagged_layers", "gradwatch/findings"}
                            | {f"gradwatch/{k}/{n}" for k, n in stats})

    def check(tag, values, steps_expected=(0, 1, 2, 3)):
        steps, got = zip(*scalars[tag])
        assert list(steps) == list(steps_expected)
        assert list(got) == pytest.approx(values, rel=1e-6)  # stored as float32

    check("gradwatch/total_norm", [r.total_norm for r in records])
    check("gradwatch/clip_coef", [r.clip_coef for r in records])
    assert any(r.clip_coef < 1 for r in records)  # clipping at 0.5 acted
    check("gradwatch/flagged_layers", [len(r.flagged) for r in records])
    for k, n in stats:  # dead/saturated units are measured on every 4th recorded step
        have = [r for r in records if r.layers[n].numbers().get(k) is not None]
        check(f"gradwatch/{k}/{n}", [r.layers[n].numbers()[k] for r in have],
              [r.step for r in have])


def test_tensorboard_borrowed_writer_nonfinite_values_and_no_layers(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from gradwatch.integrations.tensorboard import TensorBoardLogger

    writer = SummaryWriter(log_dir=str(tmp_path))
    log = TensorBoardLogger(writer, prefix="gw", layers=False)
    log(StepRecord(step=7, total_norm=math.inf, clip_coef=0.0,
                   layers={"a": LayerStat(norm=math.nan)}))
    log.close()
    writer.add_scalar("after", 1.0, 0)  # still open: the logger only flushed it
    writer.close()
    scalars = _scalars(tmp_path)
    assert set(scalars) == {"gw/total_norm", "gw/clip_coef", "gw/flagged_layers", "gw/findings",
                            "after"}
    assert scalars["gw/total_norm"] == [(7, math.inf)]
    with pytest.raises(TypeError, match="SummaryWriter"):
        TensorBoardLogger(42)


# -------------------------------------------------------------------------------------- Lightning
def _lightning_module(model: nn.Module, lr: float):
    pl = pytest.importorskip("lightning.pytorch")

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

        def training_step(self, data, _index):
            x, y = data
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Tiny()


def _reference(model, data, *, steps, accumulate, clip):
    """Plain torch: the same micro-batches, loss / accumulate, clip once, SGD."""
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms, totals, losses = [], [], []
    for s in range(steps):
        opt.zero_grad()
        for m in range(accumulate):
            i = (s * accumulate + m) * 5
            loss = loss_of(model, x[i:i + 5], y[i:i + 5]) / accumulate
            loss.backward()
        losses.append(loss.item())  # the last micro-batch's, as Lightning passes it
        norms.append(_layer_norms(model))
        totals.append(_total(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return norms, totals, losses


@pytest.mark.parametrize("where", ["trainer", "gradwatch"])
def test_lightning_fit_norms_equal_plain_torch_and_clip_once(tmp_path, where):
    from gradwatch.integrations.lightning import GradWatchCallback

    model = mlp()
    ref_model = copy.deepcopy(model)
    callback = GradWatchCallback(clip=0.1 if where == "gradwatch" else None)
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    x, y = batch(n=30, seed=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, accumulate_grad_batches=2,
                         gradient_clip_val=0.1 if where == "trainer" else None,
                         callbacks=[callback], logger=CSVLogger(tmp_path, name="csv"),
                         log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(_lightning_module(model, lr=0.1), loader)

    norms, totals, losses = _reference(ref_model, (x, y), steps=3, accumulate=2, clip=0.1)
    records = callback.history
    assert [r.step for r in records] == [0, 1, 2] and callback.watch is None
    assert [r.loss for r in records] == pytest.approx(losses, rel=1e-5)  # on_before_backward
    for rec, ref, total in zip(records, norms, totals):
        assert {f"net.{k}": v for k, v in ref.items()} == pytest.approx(
            {k: s.norm for k, s in rec.layers.items()}, rel=1e-5)
        assert rec.total_norm == pytest.approx(total, rel=1e-5)
        expected_coef = min(1.0, 0.1 / (total + 1e-6)) if where == "gradwatch" else 1.0
        assert rec.clip_coef == pytest.approx(expected_coef, rel=1e-5)
    assert any(t > 0.1 for t in totals)  # clipping acted, exactly once
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)

    with open(os.path.join(trainer.logger.log_dir, "metrics.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("gradwatch/total_norm")]
    assert [float(r["gradwatch/total_norm"]) for r in rows] == pytest.approx(
        [r.total_norm for r in records], rel=1e-6)
    assert [float(r["gradwatch/norm/net.4"]) for r in rows] == pytest.approx(
        [r.layers["net.4"].norm for r in records], rel=1e-6)


def test_lightning_refuses_to_clip_twice(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from gradwatch.integrations.lightning import GradWatchCallback

    x, y = batch(n=10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", gradient_clip_val=1.0,
                         callbacks=[GradWatchCallback(clip=1.0)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="clip the gradients twice"):
        trainer.fit(_lightning_module(mlp(), lr=0.1), loader)


# ------------------------------------------------------------------------------- HF transformers
def _gpt2(tmp_path, callbacks, *, max_grad_norm):
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (16, 8), generator=g)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=1e-2, max_grad_norm=max_grad_norm, report_to=[],
        use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=callbacks)
    trainer.train()
    return model


def _grad_probe(store):
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Reads the gradients with plain torch at the same event, before or after gradwatch."""

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            store.append((_layer_norms(model), _total(model)))

    return Probe()


def test_hf_trainer_records_every_optimizer_step_and_clips_once(tmp_path):
    pytest.importorskip("transformers")
    from gradwatch.integrations.hf import GradWatchCallback

    before, after = [], []
    callback = GradWatchCallback(clip=0.5)
    model = _gpt2(tmp_path, [_grad_probe(before), callback, _grad_probe(after)], max_grad_norm=0)
    records = callback.history
    assert [r.step for r in records] == [0, 1] and callback.watch is None
    assert len(before) == len(after) == 2  # one record per optimizer step, not per micro-batch
    assert len(model.transformer.h) == 2
    for rec, (ref, total), (_, clipped) in zip(records, before, after):
        assert "lm_head" not in rec.layers  # its weight is tied to wte and counted there once
        assert {k: s.norm for k, s in rec.layers.items()} == pytest.approx(ref, rel=1e-5)
        assert rec.total_norm == pytest.approx(total, rel=1e-5)
        assert all(s.act_norm is not None for s in rec.layers.values())
        assert total > 0.5 and clipped == pytest.approx(0.5, rel=1e-4)  # clipped once, by us
        assert rec.clip_coef == pytest.approx(0.5 / (total + 1e-6), rel=1e-5)


def _gpt2_saving(out, callback, *, resume=None):
    """The tiny GPT-2 for 4 optimizer steps, a checkpoint every 2, optionally resumed."""
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 32, (32, 8), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
        max_grad_norm=0, report_to=[], use_cpu=True, save_strategy="steps", save_steps=2,
        logging_strategy="no", disable_tqdm=True, seed=0)
    transformers.Trainer(model=model, args=args, train_dataset=data,
                         callbacks=[callback]).train(resume_from_checkpoint=resume)


def test_hf_trainer_resumed_from_a_checkpoint_resumes_the_watch(tmp_path):
    """The callback saves the watch's state with each checkpoint and loads it when the Trainer
    resumes from one: the resumed run's records are the uninterrupted run's (steps 2 and 3,
    the same numbers) and its counters go on (it started afresh at step 0, without a word).
    Without a saved state it says so."""
    pytest.importorskip("transformers")
    from gradwatch.integrations.hf import STATE_FILE, GradWatchCallback

    whole = GradWatchCallback(clip=0.5)
    _gpt2_saving(tmp_path, whole)
    assert (tmp_path / "checkpoint-2" / STATE_FILE).is_file()
    resumed = GradWatchCallback(clip=0.5)
    _gpt2_saving(tmp_path, resumed, resume=str(tmp_path / "checkpoint-2"))
    assert [r.step for r in resumed.history] == [2, 3]
    for a, b in zip(whole.history[2:], resumed.history):
        assert b.total_norm == pytest.approx(a.total_norm, rel=1e-6)
        assert {k: s.norm for k, s in b.layers.items()} == pytest.approx(
            {k: s.norm for k, s in a.layers.items()}, rel=1e-6)
    (tmp_path / "checkpoint-2" / STATE_FILE).unlink()
    with pytest.warns(UserWarning, match=r"resumed at step 2, but .* holds no gradwatch state"):
        _gpt2_saving(tmp_path, GradWatchCallback(clip=0.5),
                     resume=str(tmp_path / "checkpoint-2"))


def test_hf_trainer_clipping_conflicts_are_explained(tmp_path):
    pytest.importorskip("transformers")
    from gradwatch.integrations.hf import GradWatchCallback

    with pytest.raises(ValueError, match="clip the gradients twice"):
        _gpt2(tmp_path, [GradWatchCallback(clip=1.0)], max_grad_norm=1.0)
    callback = GradWatchCallback()
    with pytest.warns(UserWarning, match="post-clip norms"):
        _gpt2(tmp_path, [callback], max_grad_norm=1.0)
    assert len(callback.history) == 2


@pytest.mark.parametrize("module, framework", [("gradwatch.integrations.lightning", "Lightning"),
                                               ("gradwatch.integrations.hf", "HF Trainer")])
def test_callbacks_refuse_skip_and_read_well(module, framework):
    pytest.importorskip("lightning.pytorch" if "lightning" in module else "transformers")
    import importlib

    callback_cls = importlib.import_module(module).GradWatchCallback
    with pytest.raises(ValueError, match=f"'skip' is not supported with .*{framework}"):
        callback_cls(on_nonfinite="skip")
    callback = callback_cls(clip=1.0, every=5)
    assert repr(callback) == "GradWatchCallback(clip=1.0, every=5)"
    assert callback.watch is None and callback.history == ()
    callback._close()  # nothing running: a no-op
    assert callback.watch is None


# ------------------------------------------------- the frameworks' optimizer reaches GradWatch
def _update_ratio_reference(model_before, model_after):
    """‖Δθ‖/‖θ‖ of each layer (all its parameters) across one step, from two copies."""
    out = {}
    for (name, a), (_, b) in zip(model_before.named_modules(), model_after.named_modules()):
        if list(a.parameters(recurse=False)):
            before = torch.cat([p.detach().flatten() for p in a.parameters(recurse=False)])
            after = torch.cat([p.detach().flatten() for p in b.parameters(recurse=False)])
            out[name] = (torch.linalg.vector_norm(after - before)
                         / torch.linalg.vector_norm(before)).item()
    return out


def test_lightning_callback_measures_update_ratios_with_the_trainers_optimizer(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from gradwatch import JsonlLogger
    from gradwatch.io.loggers import read_runs
    from gradwatch.integrations.lightning import GradWatchCallback

    model = mlp()
    start = copy.deepcopy(model)
    log = tmp_path / "pl.jsonl"
    callback = GradWatchCallback(loggers=[JsonlLogger(log)])
    x, y = batch(n=10, seed=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_lightning_module(model, lr=0.5), loader)
    (record,) = callback.history
    expected = _update_ratio_reference(start, model)
    got = {k.removeprefix("net."): s.values.get("update_ratio") for k, s in record.layers.items()}
    assert set(expected) <= set(got) and all(got[k] is not None for k in expected)
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=0.05)
    assert read_runs(log)[-1].header["options"]["optimizer"] == "SGD"


def test_hf_callback_measures_update_ratios_with_the_trainers_optimizer(tmp_path):
    pytest.importorskip("transformers")
    from gradwatch import JsonlLogger
    from gradwatch.io.loggers import read_runs
    from gradwatch.integrations.hf import GradWatchCallback

    log = tmp_path / "hf.jsonl"
    callback = GradWatchCallback(clip=1.0, loggers=[JsonlLogger(log)])
    _gpt2(tmp_path, [callback], max_grad_norm=0)
    first = callback.history[0]
    ratios = [s.values.get("update_ratio") for s in first.layers.values()]
    assert any(r is not None and r > 0 for r in ratios)
    assert read_runs(log)[-1].header["options"]["optimizer"] == "AdamW"


def test_lightning_manual_optimization_with_two_optimizers_reads_the_one_stepping(tmp_path):
    """A GAN under manual optimization: at each optimizer's step the total norm (and clipping,
    and the rules) read that optimizer's parameters, as clip_grad_norm_ over them would; G's
    backward leaves gradients in D that D's step later zeroes, and they are not in G's total."""
    pl = pytest.importorskip("lightning.pytorch")
    from gradwatch.integrations.lightning import GradWatchCallback

    own: list[float] = []

    class Gan(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
            self.D = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

        def training_step(self, batch, i):
            (x,) = batch
            opt_g, opt_d = self.optimizers()
            z = torch.randn(x.shape[0], 8, generator=torch.Generator().manual_seed(i))
            loss_d = nn.functional.softplus(-self.D(x)).mean() + nn.functional.softplus(
                self.D(self.G(z).detach())).mean()
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            own.append(torch.nn.utils.get_total_norm([p.grad for p in self.D.parameters()]).item())
            opt_d.step()
            loss_g = nn.functional.softplus(-self.D(self.G(z))).mean()
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            own.append(torch.nn.utils.get_total_norm([p.grad for p in self.G.parameters()]).item())
            opt_g.step()

        def configure_optimizers(self):
            return [torch.optim.Adam(self.G.parameters(), lr=1e-3),
                    torch.optim.Adam(self.D.parameters(), lr=1e-3)]

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(96, 16))
    watch = GradWatchCallback(log_layers=False)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[watch], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Gan(), torch.utils.data.DataLoader(data, batch_size=32))
    assert len(watch.history) == len(own) == 6
    assert [r.total_norm for r in watch.history] == pytest.approx(own, rel=1e-6)
