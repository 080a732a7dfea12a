"""TorchScript -> Relax: load the file, re-export it with static shapes, import it, name its layers."""

from .act_calibration import calibrate_act_scales, sample_batches
from .importer import ImportedModel, import_torchscript, parse_shape, torchscript_to_exported_program
from .naming import layer_names

__all__ = ["ImportedModel", "calibrate_act_scales", "import_torchscript", "layer_names", "parse_shape",
           "sample_batches", "torchscript_to_exported_program"]
