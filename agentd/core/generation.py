"""The desired-state generation's bound: what every parse of a generation checks against."""

from __future__ import annotations

from typing import Any

# 2^53: every generation up to it is exact as a JSON number (a float in most readers) and as a
# Prometheus sample, and fits a Kubernetes label value (16 digits of the 63 allowed).
MAX_GENERATION = 2**53


def shown(value: int) -> str:
    """A generation for a message: a huge one is cut, it is no use whole."""
    if value.bit_length() > 80:  # str() of one past 4,300 digits is itself a ValueError
        return f"of about {int(value.bit_length() * 0.30103) + 1} digits"
    return str(value)


def generation_problem(value: Any) -> str | None:
    """Why `value` is no generation (None: it is one): an integer in 0..2^53."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "the generation is not an integer"
    if value < 0:
        return f"generation {shown(value)} is negative"
    if value > MAX_GENERATION:
        return (
            f"generation {shown(value)} is above the largest agentd accepts "
            f"(2^53 = {MAX_GENERATION}, exact in JSON and Prometheus)"
        )
    return None
