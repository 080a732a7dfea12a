"""TorchScript -> Relax: load the file, re-export it with static shapes, import it, name its layers."""

from .act_calibration import calibrate_act_scales, sample_batches
from .int8_sensitivity import DEFAULT_MAX_ERROR, int8_fp32_fallback, unified_layers
from .importer import ImportedModel, import_torchscript, parse_shape, torchscript_to_exported_program
from .naming import layer_names

__all__ = ["DEFAULT_MAX_ERROR", "ImportedModel", "calibrate_act_scales", "int8_fp32_fallback", "import_torchscript",
           "layer_names", "parse_shape", "sample_batches", "torchscript_to_exported_program", "unified_layers"]
