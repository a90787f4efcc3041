"""One evaluator for jaxprs whose inputs carry tags (parameter paths).

:func:`run_tagged` evaluates a function equation by equation, entering the bodies of ``jit``,
``remat`` and custom-derivative calls, and follows each tagged input through the equations
that do not change what it is (dtype conversions, copies, sharding constraints). Before each
primitive it calls ``visit(eqn, values, tags)``, which is how analyses see, for example, the
activation that meets a given kernel in a ``dot_general``. The values are whatever the caller
passes: concrete arrays (eager capture, :func:`jaxprune.fold_forward`) or tracers (the one-shot
calibration statistics are computed this way inside :func:`jax.jit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend import core as jcore

from jaxprune._src import base
from jaxprune._src.trace import CALLS, _unwrap

# Primitives whose output is still "the same tensor" as their first input.
PASS_THROUGH = frozenset(
    "convert_element_type copy copy_p reduce_precision sharding_constraint".split()
)

Visit = Callable[[Any, list[Any], list[Any]], None]


def run_tagged(fn: Callable[..., Any], tagged: Any, rest: Sequence[Any], visit: Visit) -> Any:
    """Evaluates ``fn(tagged, *rest)``, calling ``visit`` before every primitive.

    Args:
      fn: the function; its first argument is the tagged pytree.
      tagged: a pytree (usually parameters); each leaf is tagged with its path string.
      rest: further positional arguments (untagged).
      visit: ``visit(eqn, values, tags)`` with the equation, its input values and the tags of
        its inputs (``None`` for untagged inputs).

    Returns:
      What ``fn`` returns.
    """
    closed, out_shape = jax.make_jaxpr(lambda t, r: fn(t, *r), return_shape=True)(
        tagged, tuple(rest)
    )
    flat, _ = jax.tree_util.tree_flatten_with_path(tagged)
    args = jax.tree.leaves((tagged, tuple(rest)))
    tags = [base.path_str(p) for p, _ in flat] + [None] * (len(args) - len(flat))

    def run(jaxpr, consts, vals, in_tags):
        env, tag = {}, {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = c
        for v, x, t in zip(jaxpr.invars, vals, in_tags, strict=True):
            env[v] = x
            tag[v] = t

        def read(a):
            return a.val if isinstance(a, jcore.Literal) else env[a]

        for eqn in jaxpr.eqns:
            xs = [read(a) for a in eqn.invars]
            ts = [None if isinstance(a, jcore.Literal) else tag.get(a) for a in eqn.invars]
            name = eqn.primitive.name
            sub = next((eqn.params[k] for k in CALLS.get(name, ()) if k in eqn.params), None)
            if sub is not None:  # the primal body of jit, remat, custom_jvp/vjp
                body, body_consts = _unwrap(sub)
                n_in = len(body.invars)
                outs = run(body, body_consts, xs[len(xs) - n_in :], ts[len(ts) - n_in :])
            else:
                visit(eqn, xs, ts)
                outs = eqn.primitive.bind(*xs, **eqn.params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
            out_tag = ts[0] if name in PASS_THROUGH else None
            for v, o in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
                    tag[v] = out_tag
        return [read(a) for a in jaxpr.outvars]

    outs = run(closed.jaxpr, closed.consts, args, tags)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)
