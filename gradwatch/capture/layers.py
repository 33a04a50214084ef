"""The layers of a model: which modules own which parameters, and each layer's role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence
from typing import Any, Literal

from torch import nn

__all__ = ["owners", "Role", "Layer", "discover_layers", "layer_role", "activation_kind",
           "remove_all", "WEIGHTED"]

Role = Literal["weight", "norm", "embedding", "token", "scale", "bias"]
"""``weight``: owns a real matrix or kernel (Linear, Conv, RNN, attention projections) — the
layers depth-relative verdicts compare; ``norm``: a normalisation layer; ``embedding``: a
lookup table; ``token``: parameters of shape (1, ...) such as class tokens and position
embeddings; ``scale``/``bias``: only 1-d parameters (LayerScale γ, bias-only modules)."""

_NORMS = tuple(t for t in (getattr(nn, n, None) for n in (
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm", "LocalResponseNorm",
    "RMSNorm")) if t is not None)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
WEIGHTED = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase,
             nn.MultiheadAttention)
_RECTIFIERS = (nn.ReLU, nn.ReLU6)
_SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Softmax, nn.Softsign)


@dataclass(frozen=True)
class Layer:
    """A module that directly owns trainable parameters, by qualified name, with its role."""

    name: str
    params: tuple[nn.Parameter, ...]
    role: Role = "weight"
    recurrent: bool = False


def remove_all(*handle_lists: list[Any]) -> None:
    """Removes the hook handles in each list (a handle's ``remove`` is safe to call twice)."""
    for handles in handle_lists:
        for handle in handles:
            handle.remove()


def _is_matrix(shape: tuple[int, ...]) -> bool:
    rest = 1
    for d in shape[1:]:
        rest *= d
    return len(shape) >= 2 and shape[0] > 1 and rest > 1


def layer_role(module: nn.Module, named: list[tuple[str, nn.Parameter]]) -> Role:
    """The role of a module from its type and the shapes of the parameters it owns."""
    if isinstance(module, _EMBEDDINGS):
        return "embedding"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, WEIGHTED) and any(p.ndim >= 2 for _, p in named):
        return "weight"  # whatever its shape: nn.Linear(d, 1) heads and 1x1 kernels too
    shapes = [tuple(p.shape) for _, p in named]
    if any(_is_matrix(s) for s in shapes):
        return "weight"
    if any(len(s) >= 2 for s in shapes):
        return "token"
    if all(name.split(".")[-1].startswith("bias") for name, _ in named):
        return "bias"
    return "scale"


def activation_kind(module: nn.Module) -> str | None:
    """``"rectifier"`` (ReLU family: dead units), ``"saturating"`` (sigmoid, tanh, ...) or None."""
    if isinstance(module, _RECTIFIERS):
        return "rectifier"
    if isinstance(module, _SATURATING):
        return "saturating"
    return None


def discover_layers(model: nn.Module) -> list[Layer]:
    """The layers of ``model`` in ``named_modules`` order; a shared parameter counts once. A
    parameter with no entries (``nn.Linear(d, 0)``: zero extra targets) is none: its gradient
    norm is 0 whatever happens, no evidence of anything."""
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        named = [(n, p) for n, p in module.named_parameters(recurse=False)
                 if p.requires_grad and id(p) not in seen and p.numel() > 0]
        seen.update(id(p) for _, p in named)
        if named:
            layers.append(Layer(name or "(root)", tuple(p for _, p in named),
                                layer_role(module, named), isinstance(module, nn.RNNBase)))
    if not layers:
        raise ValueError("Expected `model` to have trainable parameters, but none requires grad "
                         "(or has any entries); unfreeze some (p.requires_grad_(True)) or watch "
                         "another module.")
    return layers


def owners(names: Sequence[str], modules: Sequence[nn.Module], layers: Sequence[Layer]
           ) -> tuple[list[int], list[int]]:
    """For each module: the layer it owns (-1: none), and the layer whose weight matrix it
    applies (its own weight layer, or for a module that owns no layer the weight or embedding
    whose matrix it uses: a tied output head; -1: none)."""
    owner = {layer.name: i for i, layer in enumerate(layers)}
    param_layer = {id(p): i for i, layer in enumerate(layers) for p in layer.params}
    owner_of = [owner.get(n, -1) for n in names]
    weight_user = []
    for m, own in zip(modules, owner_of):
        used = [param_layer[id(p)] for p in m.parameters(recurse=False)
                if id(p) in param_layer and p.ndim >= 2]
        weight_user.append(own if own >= 0 and layers[own].role == "weight"
                           else (used[0] if used and layers[used[0]].role in
                                 ("weight", "embedding") and own < 0 else -1))
    return owner_of, weight_user
