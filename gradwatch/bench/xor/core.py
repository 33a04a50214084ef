"""The source's XOR training (seed 004), vectorised over trials: float64 numpy, no autograd.

The source (a from-scratch numpy book) trains a 2-4-(N×4)-1 sigmoid net on XOR with one update
per pattern, patterns in fixed order, and its own Adam::

    lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t)
    m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g**2
    theta -= lr_t * m / (sqrt(v) + 1e-7)

Here every trial (a depth, a seed, plain or residual) is one row of the same arrays, so one
numpy call advances all of them. A trial shallower than the batch's deepest one passes its
input through the hidden layers it lacks (their output is masked to 0 and their gradient is
exactly 0, so Adam never moves them). A trial leaves the batch at the end of the epoch whose
summed loss reaches ``tol``, exactly as the source's loop breaks, so the others run on unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["XOR_X", "XOR_T", "EPS", "XorTrial", "init_params", "XorBatch"]

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_T = np.array([0.0, 1.0, 1.0, 0.0])
EPS = 1e-7  # the source's epsilon, added to sqrt(v) of the raw second moment
WIDTH = 4


@dataclass(frozen=True)
class XorTrial:
    """One run: ``depth`` hidden 4->4 layers, plain or residual, initialised from ``seed``."""

    depth: int
    residual: bool
    seed: int
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"Expected `depth` to be a positive int, but got {self.depth!r}.")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Expected `betas` in [0, 1), but got {self.betas!r}.")

    @property
    def name(self) -> str:
        return f"{'residual' if self.residual else 'plain'} depth {self.depth} seed {self.seed}"


def init_params(depth: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W, b)`` per layer, input first: every entry drawn from U[0, 1) as the source does.

    ``W`` is ``(in, out)`` (the layer computes ``x @ W + b``), ``b`` is ``(out,)``; the draws come
    from ``np.random.default_rng(seed)`` in layer order, W before b.
    """
    rng = np.random.default_rng(seed)
    shapes = [(2, WIDTH)] + [(WIDTH, WIDTH)] * depth + [(WIDTH, 1)]
    return [(rng.random(s), rng.random(s[1])) for s in shapes]


def _layout(depth: int) -> list[tuple[int, int, int]]:
    """``(offset, fan_in, fan_out)`` of each layer's block ``[W (in*out), b (out)]`` in a row."""
    out, off = [], 0
    for fan_in, fan_out in [(2, WIDTH)] + [(WIDTH, WIDTH)] * depth + [(WIDTH, 1)]:
        out.append((off, fan_in, fan_out))
        off += fan_in * fan_out + fan_out
    return out


def _sigmoid_(z: np.ndarray) -> list[tuple[Callable, tuple]]:
    """The source's ``1 / (1 + exp(-z))``, in place, as a list of calls."""
    return [(np.negative, (z, z)), (np.exp, (z, z)), (np.add, (z, 1.0, z)),
            (np.reciprocal, (z, z))]


class XorBatch:
    """Parameters, Adam state and buffers of several XOR trials, one row each.

    Args:
        trials: The runs to train together (any mix of depths, kinds, seeds and Adam settings).
    """

    def __init__(self, trials: Sequence[XorTrial]) -> None:
        if not trials:
            raise ValueError("Expected at least one `XorTrial`, but got none.")
        self.trials = list(trials)
        self.depth = max(t.depth for t in self.trials)
        self.layout = _layout(self.depth)
        self.size = self.layout[-1][0] + WIDTH + 1
        theta = np.zeros((len(self.trials), self.size))
        for row, trial in enumerate(self.trials):
            params = init_params(trial.depth, trial.seed)
            # layers the trial lacks sit between its last hidden layer and the output (zeros)
            used = list(range(trial.depth + 1)) + [self.depth + 1]
            for k, (w, b) in zip(used, params):
                off, fan_in, fan_out = self.layout[k]
                theta[row, off:off + w.size] = w.ravel()
                theta[row, off + w.size:off + w.size + fan_out] = b
        self.rows = np.arange(len(self.trials))  # row -> index into `trials`
        self.t = 0
        self._set_state(theta, np.zeros_like(theta), np.zeros_like(theta))

    # ------------------------------------------------------------------ state

    def _set_state(self, theta: np.ndarray, m: np.ndarray, v: np.ndarray) -> None:
        self.theta, self.m, self.v = theta, m, v
        n = len(self.rows)
        trials = [self.trials[i] for i in self.rows]
        self.grad = np.zeros_like(theta)
        self._tmp, self._tmp2 = np.empty_like(theta), np.empty_like(theta)
        col = lambda vals: np.array(vals, dtype=np.float64).reshape(n, 1)  # noqa: E731
        self._b1, self._b2 = col([t.betas[0] for t in trials]), col([t.betas[1] for t in trials])
        self._omb1 = col([1 - t.betas[0] for t in trials])
        self._omb2 = col([1 - t.betas[1] for t in trials])
        self._groups = {}  # (lr, b1, b2) -> rows, for lr_t
        for r, t in enumerate(trials):
            self._groups.setdefault((t.lr, *t.betas), []).append(r)
        self._lrt = np.empty((n, 1))
        if len(self._groups) == 1:  # one Adam setting: scalars broadcast faster than columns
            self._b1, self._b2 = trials[0].betas
            self._omb1, self._omb2 = 1 - self._b1, 1 - self._b2
            self._lrt = np.empty(())
            self._groups = {key: () for key in self._groups}
        self._sq = np.zeros((n, 1, 1))  # this epoch's sum of (y - t)^2 so far
        views = [self._view(theta, k) for k in range(len(self.layout))]
        gviews = [self._view(self.grad, k) for k in range(len(self.layout))]
        self.W, self.b, self.Wb = ([v[i] for v in views] for i in range(3))
        self.gW, self.gb, self.gWb = ([v[i] for v in gviews] for i in range(3))
        # per hidden layer: keep (0 where the trial lacks the layer) and r (1: add the input back)
        keep = np.array([[float(i < t.depth) for t in trials] for i in range(self.depth)])
        skip = np.array([[float(t.residual or i >= t.depth) for t in trials]
                         for i in range(self.depth)])
        self._keep = keep.reshape(self.depth, n, 1, 1)
        self._skip = skip.reshape(self.depth, n, 1, 1)
        self._mode = ["plain" if (k.all() and not s.any()) else "residual" if (k.all() and s.all())
                      else "mixed" for k, s in zip(keep, skip)]
        programs = [self._program(p) for p in range(4)]
        self._fwd = [f for f, _, _ in programs]
        self._bwd = [b for _, b, _ in programs]
        self._y = [y for _, _, y in programs]
        self._adam = self._adam_program()
        self._full = [f + b + self._adam for f, b, _ in programs]

    def _view(self, arr: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of layer ``k`` in ``arr``: W ``(n, in, out)``, b ``(n, 1, out)``, and both as
        one ``(n, in + 1, out)`` block (b is its last row)."""
        off, fan_in, fan_out = self.layout[k]
        n = arr.shape[0]
        wb = arr[:, off:off + (fan_in + 1) * fan_out].reshape(n, fan_in + 1, fan_out)
        return wb[:, :fan_in], wb[:, fan_in:], wb

    def remove(self, rows: np.ndarray) -> None:
        """Drops batch rows (trials that finished); the others' state is untouched."""
        keep = np.setdiff1d(np.arange(len(self.rows)), rows)
        self.rows = self.rows[keep]
        if len(keep):
            self._set_state(self.theta[keep], self.m[keep], self.v[keep])

    # ------------------------------------------------------------------ the update

    def _program(self, p: int) -> tuple[list, list, np.ndarray]:
        """The numpy calls of one update on pattern ``p``: forward (+ loss) and backward.

        Each layer's input buffer ends in a constant 1, so one ``matmul`` with the layer's block
        ``[W; b]`` (its rows in `layout` order) gives ``x @ W + b``, and one with the transposed
        input gives the gradients of W and b together. Returns ``(forward, backward, y)``.
        """
        n, L = len(self.rows), len(self.layout)
        x0 = np.append(XOR_X[p], 1.0).reshape(1, 1, 3)
        acts = [np.broadcast_to(x0, (n, 1, 3))]  # input of layer k, ending in 1
        sig = []  # sigmoid output of layer k
        fwd: list[tuple[Callable, tuple]] = []
        for k in range(L):
            fan_out = self.layout[k][2]
            mode = self._mode[k - 1] if 1 <= k <= self.depth else "plain"
            nxt = np.ones((n, 1, fan_out + 1))
            s = nxt[..., :fan_out] if mode == "plain" else np.empty((n, 1, fan_out))
            fwd.append((np.matmul, (acts[k], self.Wb[k], s)))
            fwd += _sigmoid_(s)
            sig.append(s)
            prev, here = acts[k][..., :fan_out], nxt[..., :fan_out]
            if mode == "residual":
                fwd.append((np.add, (prev, s, here)))
            elif mode == "mixed":
                fwd += [(np.multiply, (s, self._keep[k - 1], s)),
                        (np.multiply, (prev, self._skip[k - 1], here)), (np.add, (here, s, here))]
            acts.append(nxt)
        y, err, sq = sig[-1], np.empty((n, 1, 1)), np.empty((n, 1, 1))
        # the epoch's summed squares; `loss` halves them (exact: a power of two)
        fwd += [(np.subtract, (y, XOR_T[p], err)), (np.multiply, (err, err, sq)),
                (np.add, (self._sq, sq, self._sq))]
        bwd: list[tuple[Callable, tuple]] = []
        g = err  # dLoss/d(output of layer k), from the top down
        for k in reversed(range(L)):
            s, delta = sig[k], np.empty_like(sig[k])  # delta: dLoss/d(pre-activation)
            bwd += [(np.subtract, (1.0, s, delta)), (np.multiply, (delta, g, delta)),
                    (np.multiply, (delta, s, delta)),
                    (np.matmul, (acts[k].transpose(0, 2, 1), delta, self.gWb[k]))]
            if k == 0:
                break
            g_in = np.empty((n, 1, self.layout[k][1]))
            bwd.append((np.matmul, (delta, self.W[k].transpose(0, 2, 1), g_in)))
            mode = self._mode[k - 1] if 1 <= k <= self.depth else "plain"
            if mode == "residual":
                bwd.append((np.add, (g_in, g, g_in)))
            elif mode == "mixed":
                tmp = np.empty_like(g_in)
                bwd += [(np.multiply, (g, self._skip[k - 1], tmp)), (np.add, (g_in, tmp, g_in))]
            g = g_in
        return fwd, bwd, y

    def _adam_program(self) -> list[tuple[Callable, tuple]]:
        th, m, v, gr, tmp, tmp2 = self.theta, self.m, self.v, self.grad, self._tmp, self._tmp2
        return [(np.multiply, (m, self._b1, m)), (np.multiply, (gr, self._omb1, tmp)),
                (np.add, (m, tmp, m)),
                (np.multiply, (v, self._b2, v)), (np.multiply, (gr, gr, tmp)),
                (np.multiply, (tmp, self._omb2, tmp)), (np.add, (v, tmp, v)),
                (np.multiply, (m, self._lrt, tmp2)), (np.sqrt, (v, tmp)),
                (np.add, (tmp, EPS, tmp)), (np.divide, (tmp2, tmp, tmp2)),
                (np.subtract, (th, tmp2, th))]

    def _set_lr_t(self) -> None:
        t = self.t
        for (lr, b1, b2), rows in self._groups.items():
            self._lrt[rows] = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)

    @property
    def loss(self) -> np.ndarray:
        """``(rows,)``: the summed loss Σ½(y−t)² of the updates since `reset_loss`."""
        return 0.5 * self._sq[:, 0, 0]

    def reset_loss(self) -> None:
        """Starts a new epoch's loss sum."""
        self._sq.fill(0.0)

    def forward_backward(self, p: int) -> None:
        """Gradients of pattern ``p``'s loss ½(y−t)² into `grad` (its loss joins `loss`)."""
        for f, args in self._fwd[p] + self._bwd[p]:
            f(*args)

    def adam(self) -> None:
        """One step of the source's Adam with `grad` (``t`` advances by one)."""
        self.t += 1
        self._set_lr_t()
        for f, args in self._adam:
            f(*args)

    def update(self, p: int) -> None:
        """Forward, backward and one Adam step on pattern ``p``: the source's inner loop body."""
        self.t += 1
        self._set_lr_t()
        for f, args in self._full[p]:
            f(*args)

    def outputs(self) -> np.ndarray:
        """``(rows, 4)`` outputs on the four patterns with the current weights (`loss` kept)."""
        saved = self._sq.copy()
        out = np.empty((len(self.rows), 4))
        for p in range(4):
            for f, args in self._fwd[p]:
                f(*args)
            out[:, p] = self._y[p][:, 0, 0]
        self._sq[...] = saved
        return out
