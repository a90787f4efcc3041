"""jaxprune: neural-network pruning for JAX, optax and Flax.

Pure functions turn parameter pytrees into importance scores and boolean mask pytrees; optax
transformations hold and apply the masks of a pruning schedule inside jitted train steps.
"""

from jaxprune import distributions as distributions
from jaxprune import importance as importance
from jaxprune import linen as linen
from jaxprune import nnx as nnx
from jaxprune import oneshot as oneshot
from jaxprune import schedules as schedules
from jaxprune import scores as scores
from jaxprune import select as select
from jaxprune._src.fixed import keep_masks as keep_masks
from jaxprune._src.flops import Count as Count
from jaxprune._src.flops import count as count
from jaxprune._src.fold import fold_forward as fold_forward
from jaxprune._src.gate_folding import fold_gates as fold_gates
from jaxprune._src.gates_math import bernoulli_gate_deterministic as bernoulli_gate_deterministic
from jaxprune._src.gates_math import bernoulli_gate_sample as bernoulli_gate_sample
from jaxprune._src.gates_math import hard_concrete_deterministic as hard_concrete_deterministic
from jaxprune._src.gates_math import hard_concrete_prob_nonzero as hard_concrete_prob_nonzero
from jaxprune._src.gates_math import hard_concrete_sample as hard_concrete_sample
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
from jaxprune._src.groups import rename_groups as rename_groups
from jaxprune._src.labels import gate_labels as gate_labels
from jaxprune._src.labels import scale_labels as scale_labels
from jaxprune._src.llama import block_importance as block_importance
from jaxprune._src.llama import drop_blocks as drop_blocks
from jaxprune._src.llama import llama_groups as llama_groups
from jaxprune._src.llama import llama_widths as llama_widths
from jaxprune._src.masking import apply_masks as apply_masks
from jaxprune._src.masking import check_masks as check_masks
from jaxprune._src.masking import count_kept as count_kept
from jaxprune._src.masking import full_masks as full_masks
from jaxprune._src.mnist import load_mnist as load_mnist
from jaxprune._src.patterns import chain_groups as chain_groups
from jaxprune._src.patterns import channel_group as channel_group
from jaxprune._src.regularizers import AddGatePenaltyState as AddGatePenaltyState
from jaxprune._src.regularizers import AddGroupLassoState as AddGroupLassoState
from jaxprune._src.regularizers import AddL1State as AddL1State
from jaxprune._src.regularizers import ProxGatesState as ProxGatesState
from jaxprune._src.regularizers import ProxGroupLassoState as ProxGroupLassoState
from jaxprune._src.regularizers import ProxL1State as ProxL1State
from jaxprune._src.regularizers import ZeroSmallState as ZeroSmallState
from jaxprune._src.regularizers import add_gate_penalty as add_gate_penalty
from jaxprune._src.regularizers import add_group_lasso as add_group_lasso
from jaxprune._src.regularizers import add_l1 as add_l1
from jaxprune._src.regularizers import clip_gates as clip_gates
from jaxprune._src.regularizers import prox_gates as prox_gates
from jaxprune._src.regularizers import prox_group_lasso as prox_group_lasso
from jaxprune._src.regularizers import prox_l1 as prox_l1
from jaxprune._src.regularizers import zero_small as zero_small
from jaxprune._src.report import LayerStats as LayerStats
from jaxprune._src.report import SparsityStats as SparsityStats
from jaxprune._src.report import summary as summary
from jaxprune._src.select_groups import LearnedSelection as LearnedSelection
from jaxprune._src.select_groups import gate_masks as gate_masks
from jaxprune._src.select_groups import group_norm_masks as group_norm_masks
from jaxprune._src.select_groups import slimming_masks as slimming_masks
from jaxprune._src.select_groups import slimming_threshold as slimming_threshold
from jaxprune._src.shrink import shrink as shrink
from jaxprune._src.shrink import widths as widths
from jaxprune._src.shrink_nnx import shrink_module as shrink_module
from jaxprune._src.sparse_training import SparseTrainingState as SparseTrainingState
from jaxprune._src.sparse_training import drop_fraction_schedule as drop_fraction_schedule
from jaxprune._src.sparse_training import sparse_training as sparse_training
from jaxprune._src.sparse_training import ste_n_of_m as ste_n_of_m
from jaxprune._src.sparse_training import ste_topk as ste_topk
from jaxprune._src.sparsity import DynamicSurgeryState as DynamicSurgeryState
from jaxprune._src.sparsity import SparsityState as SparsityState
from jaxprune._src.sparsity import default_prunable as default_prunable
from jaxprune._src.sparsity import dynamic_network_surgery as dynamic_network_surgery
from jaxprune._src.sparsity import masks as masks
from jaxprune._src.sparsity import only_prunable as only_prunable
from jaxprune._src.sparsity import optax_sparsity as optax_sparsity
from jaxprune._src.sparsity import schedule_free_eval_params as schedule_free_eval_params
from jaxprune._src.trace import Discovery as Discovery
from jaxprune._src.trace import groups_in as groups_in
from jaxprune._src.trace import groups_under as groups_under
from jaxprune._src.trace import trace_groups as trace_groups

__version__ = "0.1.0.dev0"

__all__ = [
    "CONNECTION",
    "FILTER",
    "FILTER_SHAPE",
    "INPUT_CHANNEL",
    "LAYER",
    "UNSTRUCTURED",
    "AddGatePenaltyState",
    "AddGroupLassoState",
    "AddL1State",
    "Count",
    "Discovery",
    "DynamicSurgeryState",
    "Granularity",
    "Group",
    "LayerStats",
    "LearnedSelection",
    "Member",
    "ProxGatesState",
    "ProxGroupLassoState",
    "ProxL1State",
    "SparseTrainingState",
    "SparsityState",
    "SparsityStats",
    "ZeroSmallState",
    "add_gate_penalty",
    "add_group_lasso",
    "add_l1",
    "apply_masks",
    "bernoulli_gate_deterministic",
    "bernoulli_gate_sample",
    "block_importance",
    "chain_groups",
    "channel_group",
    "channel_indices",
    "check_groups",
    "check_masks",
    "clip_gates",
    "count",
    "count_kept",
    "default_prunable",
    "distributions",
    "drop_blocks",
    "drop_fraction_schedule",
    "dynamic_network_surgery",
    "expand_group_masks",
    "fold_forward",
    "fold_gates",
    "full_masks",
    "gate_labels",
    "gate_masks",
    "group_norm_masks",
    "group_norms",
    "group_scores",
    "group_size",
    "groups_in",
    "groups_under",
    "hard_concrete_deterministic",
    "hard_concrete_prob_nonzero",
    "hard_concrete_sample",
    "importance",
    "keep_masks",
    "linen",
    "llama_groups",
    "llama_widths",
    "load_mnist",
    "masks",
    "n_of_m",
    "nnx",
    "oneshot",
    "only_prunable",
    "optax_sparsity",
    "prox_gates",
    "prox_group_lasso",
    "prox_l1",
    "rename_groups",
    "scale_labels",
    "schedule_free_eval_params",
    "schedules",
    "scores",
    "select",
    "shrink",
    "shrink_module",
    "slimming_masks",
    "slimming_threshold",
    "sparse_training",
    "ste_n_of_m",
    "ste_topk",
    "summary",
    "trace_groups",
    "widths",
    "zero_small",
]
