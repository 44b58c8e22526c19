"""Loading models and locating their maskable parts."""

from safeseek.models.adapters import FAMILIES, architecture, locate
from safeseek.models.geometry import Architecture
from safeseek.models.load import load_model

__all__ = ["FAMILIES", "Architecture", "architecture", "load_model", "locate"]
