"""Data-driven channel importance: statistics, Flax taps and the criteria that use them.

``jaxprune.importance`` collects activations and activation gradients from Linen and NNX
models (:func:`tap`, :func:`linen_taps`, :func:`nnx_taps`), accumulates them over batches and
devices (``*_init`` / ``*_update`` / ``*_finalize``), scores channels with APoZ, mean
activation, activation Taylor, ThiNet, Inf-FS and NISP, and selects channels layer-wise,
globally or in scopes into masks over the coupled axes of :class:`jaxprune.Group` specs.
"""

from jaxprune._src.criteria import activation_taylor_scores as activation_taylor_scores
from jaxprune._src.criteria import apoz_scores as apoz_scores
from jaxprune._src.criteria import apoz_std_rule as apoz_std_rule
from jaxprune._src.criteria import inf_fs as inf_fs
from jaxprune._src.criteria import mean_activation_scores as mean_activation_scores
from jaxprune._src.criteria import scale_input_channels as scale_input_channels
from jaxprune._src.criteria import thinet_error as thinet_error
from jaxprune._src.criteria import thinet_greedy as thinet_greedy
from jaxprune._src.criteria import thinet_lstsq as thinet_lstsq
from jaxprune._src.criteria import thinet_scores as thinet_scores
from jaxprune._src.groups import normalize_scores as normalize_scores
from jaxprune._src.nisp import BatchNormLayer as BatchNormLayer
from jaxprune._src.nisp import ConvLayer as ConvLayer
from jaxprune._src.nisp import DenseLayer as DenseLayer
from jaxprune._src.nisp import FlattenLayer as FlattenLayer
from jaxprune._src.nisp import PoolLayer as PoolLayer
from jaxprune._src.nisp import nisp_scores as nisp_scores
from jaxprune._src.select_groups import group_masks as group_masks
from jaxprune._src.select_groups import select_groups as select_groups
from jaxprune._src.stats import ChannelStats as ChannelStats
from jaxprune._src.stats import ChannelStatsState as ChannelStatsState
from jaxprune._src.stats import ResponsesState as ResponsesState
from jaxprune._src.stats import ThiNetSamples as ThiNetSamples
from jaxprune._src.stats import ThiNetState as ThiNetState
from jaxprune._src.stats import channel_stats_finalize as channel_stats_finalize
from jaxprune._src.stats import channel_stats_init as channel_stats_init
from jaxprune._src.stats import channel_stats_update as channel_stats_update
from jaxprune._src.stats import reduce_across as reduce_across
from jaxprune._src.stats import responses_finalize as responses_finalize
from jaxprune._src.stats import responses_init as responses_init
from jaxprune._src.stats import responses_update as responses_update
from jaxprune._src.stats import thinet_finalize as thinet_finalize
from jaxprune._src.stats import thinet_init as thinet_init
from jaxprune._src.stats import thinet_update as thinet_update
from jaxprune._src.taps import Taps as Taps
from jaxprune._src.taps_flax import tap as tap
from jaxprune._src.taps_linen import linen_taps as linen_taps
from jaxprune._src.taps_nnx import TapIntermediate as TapIntermediate
from jaxprune._src.taps_nnx import TapPerturbation as TapPerturbation
from jaxprune._src.taps_nnx import nnx_taps as nnx_taps

__all__ = [
    "BatchNormLayer",
    "ChannelStats",
    "ChannelStatsState",
    "ConvLayer",
    "DenseLayer",
    "FlattenLayer",
    "PoolLayer",
    "ResponsesState",
    "TapIntermediate",
    "TapPerturbation",
    "Taps",
    "ThiNetSamples",
    "ThiNetState",
    "activation_taylor_scores",
    "apoz_scores",
    "apoz_std_rule",
    "channel_stats_finalize",
    "channel_stats_init",
    "channel_stats_update",
    "group_masks",
    "inf_fs",
    "linen_taps",
    "mean_activation_scores",
    "nisp_scores",
    "nnx_taps",
    "normalize_scores",
    "reduce_across",
    "responses_finalize",
    "responses_init",
    "responses_update",
    "scale_input_channels",
    "select_groups",
    "tap",
    "thinet_error",
    "thinet_finalize",
    "thinet_greedy",
    "thinet_init",
    "thinet_lstsq",
    "thinet_scores",
    "thinet_update",
]
