"""Regenerates notebooks/02_structured_shrinking.ipynb (outputs stripped). Run from the repo
root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Structured shrinking: `trace_groups` -> `shrink` -> `rebuild`

Masks only zero weights; this notebook makes a small convnet *narrower*. `trace_groups` finds
the channels that must be removed together, a score picks half of each group, `shrink` slices
the variables, `widths` and `linen.rebuild` build the smaller model, and `count` and a timed
forward pass show what was saved. Runs on a CPU in well under a minute.

Open in Colab (once the repository is public):
`https://colab.research.google.com/github/<owner>/jaxprune/blob/main/notebooks/02_structured_shrinking.ipynb`
""")
code("""
# Install jaxprune if needed, without touching the runtime's jax. Point JAXPRUNE_PIP_SPEC at
# your copy: a git URL ("git+https://.../jaxprune.git") or a local clone ("/content/jaxprune").
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxprune") is None:
    spec = os.environ.get("JAXPRUNE_PIP_SPEC")
    if not spec:
        raise ImportError(
            "jaxprune is not installed: set JAXPRUNE_PIP_SPEC to a git URL or a "
            "local clone of the repository, or run `pip install -e .` in it."
        )
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec])
import jaxprune
""")
code("""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp


class Net(nn.Module):
    # Widths are fields named after the submodules, so `linen.rebuild` can set them.
    conv1: int = 32
    conv2: int = 64
    fc1: int = 256

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.conv1, (3, 3), name="conv1")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(self.conv2, (3, 3), name="conv2")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.fc1, name="fc1")(x))
        return nn.Dense(10, name="head")(x)


model = Net()
x = jnp.ones((8, 28, 28, 1))
variables = model.init(jax.random.key(0), x)
""")
md("""
## Discover the coupled channels

Each group lists every tensor axis that carries the same channels; what cannot be pruned is
reported with a reason (spatial axes, the model's output).
""")
code("""
found = jaxprune.trace_groups(model.apply, variables, x)
print(found.explain())
""")
md("""
## Score, select, shrink, rebuild
""")
code("""
pgroups = jaxprune.groups_under(found.groups, "params")  # paths relative to variables["params"]
scores = jaxprune.group_scores(variables["params"], pgroups, reduction="l2")
keep = jaxprune.importance.select_groups(scores, 0.5)  # half of every group
small_vars = jaxprune.shrink(variables, keep, found.groups)
spec = jaxprune.widths(found.groups, keep, variables)
small = jaxprune.linen.rebuild(model, spec, small_vars, x)  # checks every shape
print("new widths:", spec)
""")
md("""
## What was saved
""")
code("""
before = jaxprune.count(model.apply, variables, x)
after = jaxprune.count(small.apply, small_vars, x)
print(f"params {sum(before.params.values()):,} -> {sum(after.params.values()):,}")
print(f"MACs   {sum(before.macs.values()):,} -> {sum(after.macs.values()):,}")


def timed(f, v, reps=20):
    f = jax.jit(f)
    f(v, x).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        f(v, x).block_until_ready()
    return (time.perf_counter() - t) / reps


t_dense, t_small = timed(model.apply, variables), timed(small.apply, small_vars)
print(
    f"forward {t_dense * 1e3:.2f} ms -> {t_small * 1e3:.2f} ms "
    f"(speed-up {t_dense / t_small:.2f}x on {jax.devices()[0].platform})"
)
""")

nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/02_structured_shrinking.ipynb")
