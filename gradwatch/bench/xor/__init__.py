"""XOR as seed 004's from-scratch book trains it: plain vs residual sigmoid nets, its own Adam.

- `core`: the source's training, vectorised over trials (float64 numpy, no autograd);
- `train`: runs trials to convergence, recording curves and weight snapshots;
- `watch`: replays snapshots on a torch copy under `gradwatch.GradWatch`;
- `claims`: the source's claims, decided from the runs;
- `plot`: the loss-spread and depth-sweep figures;
- `experiment`: `run_xor`, the bench's experiment tying them together.
"""

from __future__ import annotations

from .core import XOR_T, XOR_X, XorBatch, XorTrial
from .experiment import KINDS, claim_seeds, run_xor, xor_trials
from .train import TrialResult, train_trials
from .watch import Replay, replay_trial

__all__ = ["run_xor", "claim_seeds", "xor_trials", "KINDS", "XorTrial", "XorBatch", "XOR_X",
           "XOR_T", "TrialResult", "train_trials", "Replay", "replay_trial"]
