"""gradwatch: per-layer gradient norms, verdicts and clipping for PyTorch training loops."""

from . import clip
from .loggers import CsvLogger, JsonlLogger, read_jsonl
from .monitor import GradWatch, NonFiniteGradientError
from .records import LayerStat, Status, StepRecord
from .thresholds import Thresholds

__all__ = ["CsvLogger", "GradWatch", "JsonlLogger", "LayerStat", "NonFiniteGradientError",
           "Status", "StepRecord", "Thresholds", "clip", "read_jsonl"]
__version__ = "0.1.0"
