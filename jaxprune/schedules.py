"""Sparsity schedules (optax-compatible ``count -> sparsity``) and mask-update predicates."""

from jaxprune._src.schedules import at_steps as at_steps
from jaxprune._src.schedules import constant as constant
from jaxprune._src.schedules import dns_probability as dns_probability
from jaxprune._src.schedules import every as every
from jaxprune._src.schedules import iterative as iterative
from jaxprune._src.schedules import iterative_updates as iterative_updates
from jaxprune._src.schedules import one_shot as one_shot
from jaxprune._src.schedules import one_shot_updates as one_shot_updates
from jaxprune._src.schedules import polynomial as polynomial
from jaxprune._src.schedules import polynomial_updates as polynomial_updates

__all__ = [
    "at_steps",
    "constant",
    "dns_probability",
    "every",
    "iterative",
    "iterative_updates",
    "one_shot",
    "one_shot_updates",
    "polynomial",
    "polynomial_updates",
]
