"""Attack registry: name -> Attack(needs, score function)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class Attack:
    name: str
    needs: tuple[str, ...]  # which passes it reads: "target", "reference", "lowercase"
    score: Callable[..., np.ndarray]  # score(stats: Stats, **params) -> one float per sample, higher = member
    help: str = ""


ATTACKS: dict[str, Attack] = {}


def register(name: str, needs: tuple[str, ...] = ("target",), help: str = ""):
    def deco(fn):
        ATTACKS[name] = Attack(name, needs, fn, help)
        return fn
    return deco


def check_names(names) -> list[str]:
    bad = [n for n in names if n not in ATTACKS]
    if bad:
        raise UserError(f"unknown attack(s) {', '.join(bad)}; known: {', '.join(sorted(ATTACKS))}")
    return list(names)


def needs_of(names) -> set[str]:
    return {need for n in check_names(names) for need in ATTACKS[n].needs}
