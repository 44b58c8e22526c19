"""Model organisms: models with a planted backdoor or trained-in refusals, built locally."""

from safeseek.organisms.build import OrganismSpec, build_organism

__all__ = ["OrganismSpec", "build_organism"]
