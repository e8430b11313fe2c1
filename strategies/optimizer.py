"""Server optimizers that apply an aggregated update to the global parameters.

The aggregated update is turned into a *pseudo-gradient* ``g``: the aggregated gradient for
FedSGD, the negated aggregated delta for FedAvg (so FedAvg with server SGD at step 1 is
``θ + Δ``). ``SGD`` applies ``θ ← θ − η_t g``; ``Adam`` is the FedAdam server optimizer of
Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Kingma & Ba moments with bias
correction). The step size follows a step schedule ``η_t = η · γ^{⌊epoch / every⌋}`` (DV-FSR's
reference code halves the rate every 5 epochs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedrec.errors import ConfigError


def step_schedule(lr: float, decay: float, every: int, epoch: int) -> float:
    """Step-decayed learning rate ``lr * decay ** (epoch // every)``."""
    return lr * decay ** (epoch // every)


class ServerOptimizer:
    """Functional server optimizer over a parameter dict.

    Parameters
    ----------
    kind : str
        ``"sgd"`` or ``"adam"``.
    lr : float
        Base step size.
    decay, decay_every : float, int
        Step schedule (see :func:`step_schedule`).
    betas : tuple of float
        Adam moment decay rates.
    eps : float
        Adam denominator term.
    """

    def __init__(self, kind: str = "sgd", lr: float = 1.0, decay: float = 1.0, decay_every: int = 1,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in ("sgd", "adam"):
            raise ConfigError(f"federation.server_optimizer={kind!r}: expected 'sgd' or 'adam'")
        if lr <= 0:
            raise ConfigError(f"federation.server_lr={lr}: expected > 0")
        self.kind, self.lr, self.decay, self.decay_every = kind, lr, decay, decay_every
        self.betas, self.eps = betas, eps
        self.t = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def current_lr(self, epoch: int) -> float:
        """Step size at ``epoch``."""
        return step_schedule(self.lr, self.decay, self.decay_every, epoch)

    def step(self, params: Mapping[str, torch.Tensor], pseudo_grad: Mapping[str, torch.Tensor],
             epoch: int) -> dict[str, torch.Tensor]:
        """Return updated parameters (inputs are not modified)."""
        lr = self.current_lr(epoch)
        if self.kind == "sgd":
            return {n: params[n] - lr * pseudo_grad[n].to(params[n].dtype) for n in params}
        self.t += 1
        b1, b2 = self.betas
        out = {}
        for n, p in params.items():
            g = pseudo_grad[n].to(p.dtype)
            m = self.m.get(n, torch.zeros_like(p)).mul(b1).add(g, alpha=1 - b1)
            v = self.v.get(n, torch.zeros_like(p)).mul(b2).addcmul(g, g, value=1 - b2)
            self.m[n], self.v[n] = m, v
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            out[n] = p - lr * m_hat / (v_hat.sqrt() + self.eps)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Moments and step count."""
        return {"t": self.t, "m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.t = int(state["t"])
        self.m = dict(state["m"])
        self.v = dict(state["v"])
