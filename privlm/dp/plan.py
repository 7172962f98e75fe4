"""The DP front door (Opacus's `make_private`, checked up front): every privacy setting is validated and the plan
(q, steps, delta, sigma, ledger, the step function) is fixed before any model is loaded.

    plan = make_private(cfg.privacy, dataset_size=N, batch_size=B, micro_batch_size=b, epochs=E)
    train(..., steps_factory=plan.steps_factory(pad_example))

`--privacy_report` goes through the same `plan_budget` with q and steps given directly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import config as C
from ..errors import UserError
from . import accountant
from .sampling import steps_per_epoch


@dataclass
class PrivacyArgs:
    """The privacy section (seed 001's `privacy_args`). target_epsilon > 0 or a noise_multiplier turns DP on."""
    target_epsilon: float = C.field(-1.0, aliases=("--eps",), help="> 0 turns DP-SGD on; -1 trains without DP")
    target_delta: float | None = C.field(None, aliases=("--delta",), help="default 1/(2N), must be < 1/N")
    noise_multiplier: float | None = C.field(None, help="sigma; calibrated from target_epsilon when not given")
    max_grad_norm_dp: float = C.field(1.0, aliases=("--clip",), help="per-example clipping norm C (-1: none, "
                                                                      "only without DP)")
    accountant: str = C.field("prv", choices=list(accountant.ACCOUNTANTS))
    sampling: str = C.field("poisson", choices=["poisson", "shuffle"],
                            help="shuffle: fixed batches (the accountant assumes Poisson; a warning is printed)")
    reproducible_noise: bool = C.field(False, help="derive DP noise and Poisson batches from the config seed (tests, "
                                                   "debugging); default: the OS's secure randomness, never stored")

    @property
    def enabled(self) -> bool:
        return self.target_epsilon > 0 or self.noise_multiplier is not None

    def validate(self) -> list[str]:
        """What can be checked without the data (N): run at config parse time."""
        p = []
        if self.target_epsilon == 0 or (self.target_epsilon < 0 and self.target_epsilon != -1):
            p.append("privacy.target_epsilon: must be > 0 (or -1 for no DP)")
        if self.target_delta is not None and not 0 < self.target_delta < 1:
            p.append("privacy.target_delta: must be in (0, 1)")
        if self.max_grad_norm_dp == -1:  # seed 004's --clip -1: no clipping, meaningful only without DP
            if self.target_epsilon != -1 or self.noise_multiplier is not None:
                p.append("privacy.max_grad_norm_dp: -1 (no clipping) gives no privacy; set a clipping norm > 0")
        elif not self.max_grad_norm_dp > 0:
            p.append("privacy.max_grad_norm_dp: must be > 0 (or -1 without DP)")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            p.append("privacy.noise_multiplier: must be >= 0")
        elif self.noise_multiplier == 0 and not self.reproducible_noise:
            p.append("privacy.noise_multiplier: 0 gives no privacy; use target_epsilon -1 for a run without DP (0 is "
                     "accepted with --reproducible_noise, for debugging)")
        return p


@dataclass
class PrivacyPlan:
    """Everything a DP run is committed to before it starts; `ledger` records what it has spent so far."""
    sample_rate: float
    steps: int
    steps_per_epoch: int
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    sampling: str
    dataset_size: int
    target_epsilon: float | None
    ledger: accountant.Ledger
    reproducible_noise: bool = False
    whitebox: object = None  # privlm.audit.whitebox.GradientCanaries: the audit's gradient canaries, if any

    @property
    def noise_source(self) -> str:
        return "seeded" if self.reproducible_noise else "secure"

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.dataset_size

    def steps_factory(self, pad_example):
        """For `training.train(steps_factory=...)`: Poisson batches, the DP step, the ledger in checkpoints."""
        from .step import DPSteps

        return lambda ds, col, spec, rank, world: DPSteps(ds, col, spec, rank, world, plan=self,
                                                          pad_example=pad_example)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("ledger")
        d.pop("whitebox")
        d["noise_source"] = self.noise_source
        return d


def plan_budget(privacy: PrivacyArgs, sample_rate: float, steps: int, delta: float) -> dict:
    """sigma for (target_epsilon, delta, q, steps), or epsilon for a given sigma. Shared by make_private and
    --privacy_report."""
    problems = accountant.check_params(delta=delta, sample_rate=sample_rate, steps=steps,
                                       noise_multiplier=privacy.noise_multiplier)
    if problems:
        raise UserError("; ".join(problems))
    if privacy.noise_multiplier is not None:
        sigma = privacy.noise_multiplier
        eps = accountant.epsilon(sigma, sample_rate, steps, delta, privacy.accountant)
    else:
        sigma = accountant.noise_multiplier(privacy.target_epsilon, sample_rate, steps, delta, privacy.accountant)
        eps = privacy.target_epsilon
    return {"noise_multiplier": sigma, "epsilon": eps, "sample_rate": sample_rate, "steps": steps, "delta": delta,
            "accountant": privacy.accountant}


def run_delta(privacy: PrivacyArgs, dataset_size: int) -> float:
    """The delta a run is judged at: the configured one, else 1/(2N)."""
    return privacy.target_delta if privacy.target_delta is not None else 1 / (2 * dataset_size)


def make_private(privacy: PrivacyArgs, *, dataset_size: int, batch_size: int, epochs: float, max_steps: int = -1,
                 grad_accum: int = 1, max_grad_norm: float = 0.0) -> PrivacyPlan:
    """Validate every privacy setting against the data and the training setup; return the plan. Raises one
    UserError naming every problem. Cheap (no model): call it before loading anything."""
    from ..training import planned_steps

    problems = privacy.validate()
    n = dataset_size
    if n < 1:
        problems.append("dataset: empty")
    if batch_size < 1:
        problems.append("trainer_args.total_train_batch_size: must be >= 1")
    if problems:
        raise UserError("invalid privacy settings: " + "; ".join(problems))
    q = min(1.0, batch_size / n)
    delta = run_delta(privacy, n)
    if delta >= 1 / n:
        problems.append(f"privacy.target_delta: {delta:g} must be < 1/N = {1 / n:.3g} (such a delta allows "
                        "leaking a whole record)")
    if grad_accum != 1:
        problems.append("trainer_args.gradient_accumulation_steps: DP accumulates its Poisson batch itself; use 1 "
                        "and set total_train_batch_size")
    if max_grad_norm:
        problems.append("trainer_args.max_grad_norm: DP clips per example (privacy.max_grad_norm_dp); set the "
                        "ordinary clipping to 0")
    if problems:
        raise UserError("invalid privacy settings: " + "; ".join(problems))
    spe = steps_per_epoch(q)
    steps = planned_steps(epochs, max_steps, spe)
    budget = plan_budget(privacy, q, steps, delta)
    ledger = accountant.Ledger(sample_rate=q, noise_multiplier=budget["noise_multiplier"],
                               max_grad_norm=privacy.max_grad_norm_dp, delta=delta, accountant=privacy.accountant)
    return PrivacyPlan(sample_rate=q, steps=steps, steps_per_epoch=spe, delta=delta,
                       noise_multiplier=budget["noise_multiplier"], max_grad_norm=privacy.max_grad_norm_dp,
                       accountant=privacy.accountant, sampling=privacy.sampling, dataset_size=n,
                       target_epsilon=privacy.target_epsilon if privacy.target_epsilon > 0 else None, ledger=ledger,
                       reproducible_noise=privacy.reproducible_noise)


def fixed_plan(*, noise_multiplier: float, max_grad_norm: float, dataset_size: int, sample_rate: float = 1.0,
               delta: float = 1e-5, steps: int = 1, accountant_name: str = "prv", sampling: str = "poisson",
               reproducible_noise: bool = True) -> PrivacyPlan:
    """A plan with sigma set directly, no calibration (tests, benchmarks, audits that choose sigma themselves)."""
    ledger = accountant.Ledger(sample_rate=sample_rate, noise_multiplier=noise_multiplier,
                               max_grad_norm=max_grad_norm, delta=delta, accountant=accountant_name)
    return PrivacyPlan(sample_rate=sample_rate, steps=steps, steps_per_epoch=steps_per_epoch(sample_rate),
                       delta=delta, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                       accountant=accountant_name, sampling=sampling, dataset_size=dataset_size, target_epsilon=None,
                       ledger=ledger, reproducible_noise=reproducible_noise)
