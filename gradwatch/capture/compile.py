"""torch.compile support: spotting compiled modules and explaining hooks that never ran."""

from __future__ import annotations

from torch import nn

__all__ = ["compiled_names", "unwrap_compiled", "compiled_warning", "NO_ACTIVATION_GRADS"]

NO_ACTIVATION_GRADS = (
    "GradWatch saw no gradient w.r.t. any layer output although the parameters have gradients: "
    "its activation hooks did not run, so every act_norm is None. Either GradWatch was created "
    "after this step's forward pass, or watch.step() was called again without a new forward "
    "and backward (it measures the same gradients twice), or the model runs under "
    "torch.compile and the hooks were added after its first compiled call (such hooks are "
    "ignored, pytorch#117265). Call watch.step() once per backward; attach "
    "GradWatch before torch.compile (or before the compiled model's first call), or pass "
    "activations=False to measure parameter gradients only (those norms and clipping are "
    "unaffected). This warning is shown once."
)


def _is_optimized(module: nn.Module) -> bool:
    return hasattr(module, "_orig_mod") and type(module).__name__ == "OptimizedModule"


def unwrap_compiled(model: nn.Module, *, warn: bool = False) -> nn.Module:
    """The original module behind ``torch.compile(model)`` (so layer names carry no
    ``_orig_mod.`` prefix); any other module unchanged. Parameters are shared, never copied.
    With ``warn``, explains that hooks added to an already compiled model may never run."""
    if warn and compiled_names(model):
        import warnings

        from .hooks import user_stacklevel

        warnings.warn(compiled_warning(compiled_names(model)), UserWarning,
                      stacklevel=user_stacklevel())
    while _is_optimized(model):
        model = model._orig_mod
    return model


def compiled_names(model: nn.Module) -> list[str]:
    """Qualified names of ``model`` and submodules that are compiled: ``torch.compile`` wrappers
    (``OptimizedModule``) or modules compiled in place with ``nn.Module.compile()``."""
    found = []
    for name, module in model.named_modules():
        if _is_optimized(module) or getattr(module, "_compiled_call_impl", None) is not None:
            found.append(name or "(root)")
    return found


def compiled_warning(names: list[str]) -> str:
    """The message shown when GradWatch is attached to an already compiled model."""
    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"GradWatch was attached to a model compiled with torch.compile ({shown}). "
            f"Parameter-gradient norms and clipping are unaffected, but if the compiled module has "
            f"already run, the forward hooks gradwatch adds now are ignored (pytorch#117265): "
            f"activation-gradient norms (act_norm) will be missing and layers keep their "
            f"definition order. Attach GradWatch to the model before torch.compile, or pass "
            f"activations=False.")
