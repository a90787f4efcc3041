"""Test configuration shared by every test module.

* Eight fake CPU devices, so sharding tests run on a laptop or CI box.
* ``jax_numpy_rank_promotion='raise'``: implicit rank broadcasting in jaxprune code is a bug.
* Strict dtype promotion for jaxprune's own unit tests. optax's Adam fails under it (its bias
  correction raises ``float ** int32``), so tests that run Adam-family optimizers opt out with
  ``@pytest.mark.standard_dtypes``.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "standard_dtypes: run under JAX's standard (not strict) dtype promotion"
    )


@pytest.fixture(autouse=True)
def _strict_dtypes(request):
    marked = request.node.get_closest_marker("standard_dtypes")
    with jax.numpy_dtype_promotion("standard" if marked else "strict"):
        yield


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    # chex.assert_max_traces counts per function object across tests; start each test at 0.
    import chex

    chex.clear_trace_counter()
    yield
