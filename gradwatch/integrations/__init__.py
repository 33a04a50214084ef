"""Bridges to the tools people already train with; each module imports its library only when used.

- `gradwatch.integrations.tensorboard.TensorBoardLogger`: scalars to a TensorBoard SummaryWriter.
- `gradwatch.integrations.lightning.GradWatchCallback`: a PyTorch Lightning callback.
- `gradwatch.integrations.hf.GradWatchCallback`: a Hugging Face ``transformers.TrainerCallback``.
- `gradwatch.integrations.wandb.WandbLogger`: every record to a Weights & Biases run.
"""

from __future__ import annotations

__all__: list[str] = []
