"""Safety Circuit Tuning: unit-level gradient masks and the tuning loop around a circuit."""

from safeseek.tuning.ownership import Ownership, ownership
from safeseek.tuning.sct import METHODS, MODES, TuneConfig, tune

__all__ = ["METHODS", "MODES", "Ownership", "TuneConfig", "ownership", "tune"]
