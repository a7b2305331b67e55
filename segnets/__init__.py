"""segnets: FCN-32s/16s/8s, DeconvNet and U-Net on minigrad, with data, metrics, training and prediction.

>>> import segnets
>>> segnets.MODELS
['fcn32s', 'fcn16s', 'fcn8s', 'deconvnet', 'unet']
>>> model = segnets.build_model("unet", num_classes=2, in_channels=1, width=4, padding="same")
>>> model.num_parameters()
121658
"""
from .models import MODELS, build_model, load_torch_state_dict, options_of, summary

__all__ = ["MODELS", "build_model", "load_torch_state_dict", "options_of", "summary"]
