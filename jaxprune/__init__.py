"""jaxprune: neural-network pruning for JAX, optax and Flax.

Pure functions turn parameter pytrees into importance scores and boolean mask pytrees; optax
transformations hold and apply the masks of a pruning schedule inside jitted train steps.
"""

from jaxprune import distributions as distributions
from jaxprune import importance as importance
from jaxprune import schedules as schedules
from jaxprune import scores as scores
from jaxprune import select as select
from jaxprune._src.fixed import keep_masks as keep_masks
from jaxprune._src.granularity import CONNECTION as CONNECTION
from jaxprune._src.granularity import FILTER as FILTER
from jaxprune._src.granularity import FILTER_SHAPE as FILTER_SHAPE
from jaxprune._src.granularity import INPUT_CHANNEL as INPUT_CHANNEL
from jaxprune._src.granularity import LAYER as LAYER
from jaxprune._src.granularity import UNSTRUCTURED as UNSTRUCTURED
from jaxprune._src.granularity import Granularity as Granularity
from jaxprune._src.granularity import n_of_m as n_of_m
from jaxprune._src.groups import Group as Group
from jaxprune._src.groups import Member as Member
from jaxprune._src.groups import channel_indices as channel_indices
from jaxprune._src.groups import check_groups as check_groups
from jaxprune._src.groups import expand_group_masks as expand_group_masks
from jaxprune._src.groups import group_norms as group_norms
from jaxprune._src.groups import group_scores as group_scores
from jaxprune._src.groups import group_size as group_size
from jaxprune._src.masking import LayerStats as LayerStats
from jaxprune._src.masking import SparsityStats as SparsityStats
from jaxprune._src.masking import apply_masks as apply_masks
from jaxprune._src.masking import check_masks as check_masks
from jaxprune._src.masking import count_kept as count_kept
from jaxprune._src.masking import full_masks as full_masks
from jaxprune._src.masking import summary as summary
from jaxprune._src.mnist import load_mnist as load_mnist
from jaxprune._src.sparsity import DynamicSurgeryState as DynamicSurgeryState
from jaxprune._src.sparsity import SparsityState as SparsityState
from jaxprune._src.sparsity import default_prunable as default_prunable
from jaxprune._src.sparsity import dynamic_network_surgery as dynamic_network_surgery
from jaxprune._src.sparsity import masks as masks
from jaxprune._src.sparsity import optax_sparsity as optax_sparsity

__version__ = "0.1.0.dev0"

__all__ = [
    "CONNECTION",
    "FILTER",
    "FILTER_SHAPE",
    "INPUT_CHANNEL",
    "LAYER",
    "UNSTRUCTURED",
    "DynamicSurgeryState",
    "Granularity",
    "Group",
    "LayerStats",
    "Member",
    "SparsityState",
    "SparsityStats",
    "apply_masks",
    "channel_indices",
    "check_groups",
    "check_masks",
    "count_kept",
    "default_prunable",
    "distributions",
    "dynamic_network_surgery",
    "expand_group_masks",
    "full_masks",
    "group_norms",
    "group_scores",
    "group_size",
    "importance",
    "keep_masks",
    "load_mnist",
    "masks",
    "n_of_m",
    "optax_sparsity",
    "schedules",
    "scores",
    "select",
    "summary",
]
