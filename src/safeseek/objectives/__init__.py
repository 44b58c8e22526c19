"""Scenario objectives: weighted loss terms under the views of a MaskedModel."""

from safeseek.objectives.base import Objective, Term, term_loss
from safeseek.objectives.scenarios import OBJECTIVES, objective

__all__ = ["OBJECTIVES", "Objective", "Term", "objective", "term_loss"]
