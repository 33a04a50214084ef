"""gradwatch: per-layer gradient statistics, verdicts, a diagnosis and clipping for PyTorch."""

from . import clip
from .measure import statistics
from .io.loggers import CsvLogger, JsonlLogger, Run, read_jsonl, read_runs
from .monitor import GradWatch, NonFiniteGradientError
from .record.records import Finding, LayerStat, Status, StepRecord
from .measure.statistics import Statistic
from .verdict.thresholds import Thresholds

__all__ = ["CsvLogger", "Finding", "GradWatch", "JsonlLogger", "LayerStat",
           "NonFiniteGradientError", "Run", "Statistic", "Status", "StepRecord", "Thresholds",
           "clip", "read_jsonl", "read_runs", "statistics"]
__version__ = "0.2.0"
