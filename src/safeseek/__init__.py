"""SafeSeek: find, ablate, tune around and remove safety circuits in language models."""

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.masking import MaskedModel
from safeseek.models import load_model

__all__ = ["Circuit", "MaskedModel", "SafeSeekError", "load_model"]
__version__ = "0.1.0"
