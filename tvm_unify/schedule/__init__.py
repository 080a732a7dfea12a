"""Hand-written default CPU schedules (x86 and aarch64) for the layers that stay dense."""

from .contraction import Contraction
from .fallback import Fallback
from .pipeline import RULE_ATTR, ApplyDefaultSchedules, default_rules, prepare_passes, schedule_default

__all__ = ["RULE_ATTR", "ApplyDefaultSchedules", "Contraction", "Fallback", "default_rules", "prepare_passes",
           "schedule_default"]
