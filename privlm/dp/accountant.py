"""Privacy accounting through Opacus's accountants (PRV by default, RDP on request): no hand-written RDP.

The ledger is what a run has spent so far; it travels with every checkpoint so that a resumed run continues it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from ..errors import UserError

ACCOUNTANTS = ("prv", "rdp")


def check_params(epsilon: float | None = None, delta: float | None = None, sample_rate: float | None = None,
                 steps: int | None = None, noise_multiplier: float | None = None, n: int | None = None) -> list[str]:
    p = []
    if epsilon is not None and not epsilon > 0:
        p.append(f"target_epsilon: must be > 0, got {epsilon}")
    if delta is not None and not 0 < delta < 1:
        p.append(f"target_delta: must be in (0, 1), got {delta}")
    if sample_rate is not None and not 0 < sample_rate <= 1:
        p.append(f"sample_rate: must be in (0, 1], got {sample_rate}")
    if steps is not None and steps < 1:
        p.append(f"steps: must be >= 1, got {steps}")
    if noise_multiplier is not None and not noise_multiplier >= 0:
        p.append(f"noise_multiplier: must be >= 0, got {noise_multiplier}")
    if n is not None and n < 1:
        p.append("dataset size: must be >= 1")
    return p


def _accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name not in ACCOUNTANTS:
        raise UserError(f"accountant: expected one of {', '.join(ACCOUNTANTS)}, got {name!r}")
    return PRVAccountant() if name == "prv" else RDPAccountant()


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv") -> float:
    """epsilon spent by `steps` Poisson-subsampled Gaussian steps."""
    problems = check_params(delta=delta, sample_rate=sample_rate, steps=steps, noise_multiplier=noise_multiplier)
    if problems:
        raise UserError("; ".join(problems))
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def noise_multiplier(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                     accountant: str = "prv", tolerance: float = 0.01) -> float:
    """The smallest sigma (to `tolerance` in epsilon) that keeps `steps` steps within (target_epsilon, delta)."""
    problems = check_params(epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps)
    if problems:
        raise UserError("; ".join(problems))
    from opacus.accountants.utils import get_noise_multiplier

    _accountant(accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant=accountant,
                                              epsilon_tolerance=tolerance))
        except ValueError as e:
            raise UserError(f"cannot reach epsilon={target_epsilon}: {e}") from None


@dataclass
class Ledger:
    """What a DP run has spent: saved with each checkpoint and the final output."""
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str = "prv"
    steps: int = 0
    epsilon: float = 0.0

    def step(self, n: int = 1):
        self.steps += n

    def update_epsilon(self) -> float:
        self.epsilon = 0.0 if self.steps == 0 else epsilon(self.noise_multiplier, self.sample_rate, self.steps,
                                                           self.delta, self.accountant)
        return self.epsilon

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Ledger":
        return cls(**d)
