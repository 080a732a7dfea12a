"""Default CPU schedules for the dense part of a model, as dlight-style rules."""

from .apply import RULE_ATTR, SCHEDULED, ApplyDefaultSchedules, default_rules, is_scheduled
from .contraction import Contraction
from .fallback import Fallback

__all__ = ["ApplyDefaultSchedules", "Contraction", "Fallback", "RULE_ATTR", "SCHEDULED", "default_rules",
           "is_scheduled"]
