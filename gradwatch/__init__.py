"""gradwatch: per-layer gradient statistics, verdicts, a diagnosis and clipping for PyTorch."""

from . import clip, statistics
from .loggers import CsvLogger, JsonlLogger, Run, read_jsonl, read_runs
from .monitor import GradWatch, NonFiniteGradientError
from .records import Finding, LayerStat, Status, StepRecord
from .statistics import Statistic
from .thresholds import Thresholds

__all__ = ["CsvLogger", "Finding", "GradWatch", "JsonlLogger", "LayerStat",
           "NonFiniteGradientError", "Run", "Statistic", "Status", "StepRecord", "Thresholds",
           "clip", "read_jsonl", "read_runs", "statistics"]
__version__ = "0.2.0"
