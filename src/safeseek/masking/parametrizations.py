"""Learnable binary membership masks over a grid of units (`[n_layers, units_per_layer]`).

A logit z_u per unit says how strongly unit u belongs to the circuit. Logits are fp32 whatever
the model's dtype. Two parametrisations share one interface:

- `ste` (the paper's): s = sigmoid(z / T); the forward value is the hard 1[s > 0.5] and the
  backward pass uses the gradient of s (straight-through estimator).
- `hard_concrete` (L0 regularisation, Louizos et al. 2018; Edge Pruning): a stretched, clamped
  concrete sample during training, so the expected number of units (L0) is differentiable; in
  evaluation mode the mask is deterministic and binary.

Either way the read-off circuit is the set of units whose deterministic mask is 1
(z_u > 0 with the default settings).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MaskParametrization(nn.Module):
    """Base class: `forward()` gives the membership in [0, 1] used by the masked forward pass."""

    default_init: float = -3.0

    def __init__(self, shape: tuple[int, ...], init_logit: float | None = None, device=None):
        super().__init__()
        init = self.default_init if init_logit is None else float(init_logit)
        self.logits = nn.Parameter(torch.full(shape, init, dtype=torch.float32, device=device))

    def hard(self) -> torch.Tensor:
        """Deterministic binary membership (bool), the circuit as read off."""
        return self.logits.detach() > 0

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_size(self) -> torch.Tensor:  # pragma: no cover - abstract
        """Differentiable expected number of units in the circuit."""
        raise NotImplementedError


class STEMask(MaskParametrization):
    """Sigmoid with a straight-through hard threshold (deterministic in training and eval)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        init_logit: float | None = None,
        temperature: float = 1.0,
        device=None,
    ):
        super().__init__(shape, init_logit, device)
        self.temperature = float(temperature)

    def forward(self) -> torch.Tensor:
        soft = torch.sigmoid(self.logits / self.temperature)
        hard = (self.logits > 0).to(soft.dtype)
        return hard + (soft - soft.detach())

    def expected_size(self) -> torch.Tensor:
        """The circuit's actual size, with the sigmoid's gradient (straight-through)."""
        return self.forward().sum()


class HardConcreteMask(MaskParametrization):
    """Hard-concrete (stretched, clamped binary-concrete) gates; logits are log alpha."""

    def __init__(
        self,
        shape: tuple[int, ...],
        init_logit: float | None = None,
        beta: float = 2.0 / 3.0,
        gamma: float = -0.1,
        zeta: float = 1.1,
        device=None,
    ):
        super().__init__(shape, init_logit, device)
        self.beta, self.gamma, self.zeta = float(beta), float(gamma), float(zeta)

    def hard(self) -> torch.Tensor:
        """Deterministic gate (the clamped stretched sigmoid of log alpha) above one half."""
        p = (0.5 - self.gamma) / (self.zeta - self.gamma)
        return self.logits.detach() > math.log(p / (1 - p))

    def forward(self) -> torch.Tensor:
        if not self.training:
            return self.hard().to(self.logits.dtype)
        u = torch.rand_like(self.logits).clamp_(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def expected_size(self) -> torch.Tensor:
        shift = self.beta * math.log(-self.gamma / self.zeta)
        return torch.sigmoid(self.logits - shift).sum()


PARAMETRIZATIONS: dict[str, type[MaskParametrization]] = {
    "ste": STEMask,
    "hard_concrete": HardConcreteMask,
}
