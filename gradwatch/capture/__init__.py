"""Capture: what gradwatch attaches to the model and the optimizer (hooks, the watched set, the
forward order, AMP, distributed and compile support)."""
