"""Data for unify training: the built-in sets (``builtin``) and the user's own (``user``), as a ``Task``."""

from .builtin import DATASETS, NUM_CLASSES, AugmentedDigits, calibration_samples, default_dataset, load_task
from .task import LossFn, MetricFn, Task, top1
from .user import DataOptions, load_user_data

__all__ = ["AugmentedDigits", "DATASETS", "DataOptions", "LossFn", "MetricFn", "NUM_CLASSES", "Task",
           "calibration_samples", "default_dataset", "load_task", "load_user_data", "top1"]
