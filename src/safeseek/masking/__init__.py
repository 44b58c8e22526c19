"""Masks over model units: parametrisations and the MaskedModel that applies them."""

from safeseek.masking.masked_model import ABLATIONS, MaskedModel
from safeseek.masking.parametrizations import PARAMETRIZATIONS

__all__ = ["ABLATIONS", "PARAMETRIZATIONS", "MaskedModel"]
