"""Scenario objectives: weighted loss terms under the views of a MaskedModel."""

from safeseek.objectives.base import Objective, Reference, Term, term_loss
from safeseek.objectives.scenarios import objective

__all__ = ["Objective", "Reference", "Term", "objective", "term_loss"]
