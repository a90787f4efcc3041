"""The one jaxpr interpreter of the library, and evaluation of jaxprs with tagged inputs.

:class:`JaxprWalker` walks a jaxpr equation by equation. It owns what every analysis of a
jaxpr needs and none should repeat: the environment from variables to values (literals and
constants included, outputs bound to a ``DropVar`` discarded), entering the bodies of
call-like primitives (``pjit``/``jit``, ``remat``/``checkpoint``, ``custom_jvp_call``,
``custom_vjp_call``, ``closed_call``, see :data:`CALLS`) with the trailing operands as
their inputs, and the dispatch of each equation to a hook. What a *value* is belongs to
the client, which overrides the hooks:

* :meth:`JaxprWalker.literal` and :meth:`JaxprWalker.constant`: the value of a literal
  operand and of a constant of a (closed) jaxpr;
* :meth:`JaxprWalker.equation`: the outputs of any other primitive, given its inputs;
* :meth:`JaxprWalker.call`: the outputs of a call-like primitive (default: walk its body);
* :meth:`JaxprWalker.scan`, :meth:`JaxprWalker.cond`, :meth:`JaxprWalker.while_loop`:
  control flow (default: treated as any other primitive, by :meth:`JaxprWalker.equation`).

The three clients are the channel graph of :func:`jaxprune.trace_groups` (values are axis
nodes of a union-find), the MAC counter of :func:`jaxprune.count` (values are the parameter
path a tensor was read from) and :func:`run_tagged` below (values are arrays or tracers,
each with the path tag of the parameter it still is).

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
from typing import Any, Generic, TypeVar

import jax
from jax.extend import core as jcore

from jaxprune._src import base

V = TypeVar("V")

# Call-like primitives and the parameters holding their body, in order of preference.
CALLS = {
    "pjit": ("jaxpr",),
    "jit": ("jaxpr",),
    "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",),
    "remat": ("jaxpr",),
    "remat2": ("jaxpr",),
    "checkpoint": ("jaxpr",),
    "custom_jvp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
}

# Primitives whose output is still "the same tensor" as their first input.
PASS_THROUGH = frozenset(
    "convert_element_type copy copy_p reduce_precision sharding_constraint".split()
)


def unwrap_jaxpr(j: Any) -> tuple[Any, list[Any]]:
    """Splits a ``ClosedJaxpr`` into its open jaxpr and constants (an open one has none).

    Example:
      >>> import jax
      >>> from jaxprune._src.interpret import unwrap_jaxpr
      >>> jaxpr, consts = unwrap_jaxpr(jax.make_jaxpr(lambda x: x + 1)(1.0))
      >>> len(jaxpr.eqns), consts
      (1, [])
    """
    if isinstance(j, jcore.ClosedJaxpr):
        return j.jaxpr, list(j.consts)
    return j, []


def call_body(eqn: Any) -> Any | None:
    """The body (a jaxpr) of a call-like equation (see :data:`CALLS`), else ``None``."""
    for key in CALLS.get(eqn.primitive.name, ()):
        sub = eqn.params.get(key)
        if sub is not None:
            return sub
    return None


class JaxprWalker(Generic[V]):
    """Walks a jaxpr equation by equation; subclasses say what a value is (see module doc).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune._src.interpret import JaxprWalker
      >>> class Names(JaxprWalker):  # the primitives met, bodies of calls entered
      ...     def __init__(self):
      ...         self.seen = []
      ...     def equation(self, eqn, ins):
      ...         self.seen.append(eqn.primitive.name)
      ...         return [None] * len(eqn.outvars)
      >>> w = Names()
      >>> _ = w.walk(jax.make_jaxpr(lambda x: jax.jit(jnp.sin)(x) * 2)(1.0), [None])
      >>> w.seen
      ['sin', 'mul']
    """

    def literal(self, atom: Any) -> V:
        """The value of a literal operand (read anew at every use). Default: ``None``."""
        return None  # type: ignore[return-value]

    def constant(self, var: Any, value: Any) -> V:
        """The value of a constant of the jaxpr (``value`` is ``None`` for an open one)."""
        return None  # type: ignore[return-value]

    def equation(self, eqn: Any, ins: list[V]) -> list[V]:
        """The values of ``eqn.outvars`` given the values of ``eqn.invars``."""
        raise NotImplementedError

    def call(self, eqn: Any, body: Any, ins: list[V]) -> list[V]:
        """A call-like equation: ``ins`` are its trailing operands, one per body input."""
        return self.walk(body, ins)

    def scan(self, eqn: Any, ins: list[V]) -> list[V]:
        """A ``scan``; by default like any other primitive."""
        return self.equation(eqn, ins)

    def cond(self, eqn: Any, ins: list[V]) -> list[V]:
        """A ``cond``; by default like any other primitive."""
        return self.equation(eqn, ins)

    def while_loop(self, eqn: Any, ins: list[V]) -> list[V]:
        """A ``while``; by default like any other primitive."""
        return self.equation(eqn, ins)

    def dispatch(self, eqn: Any, ins: list[V]) -> list[V]:
        """Sends one equation to its hook and returns the values of its outputs."""
        body = call_body(eqn)
        if body is not None:
            n_in = len(unwrap_jaxpr(body)[0].invars)
            return self.call(eqn, body, ins[len(ins) - n_in :])
        name = eqn.primitive.name
        if name == "scan":
            return self.scan(eqn, ins)
        if name == "cond":
            return self.cond(eqn, ins)
        if name == "while":
            return self.while_loop(eqn, ins)
        return self.equation(eqn, ins)

    def walk(self, jaxpr: Any, ins: Sequence[V]) -> list[V]:
        """Walks ``jaxpr`` (open or closed) on input values ``ins``; returns its outputs."""
        jaxpr, consts = unwrap_jaxpr(jaxpr)
        if not consts:
            consts = [None] * len(jaxpr.constvars)
        env: dict[Any, V] = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = self.constant(v, c)
        for v, x in zip(jaxpr.invars, ins, strict=True):
            env[v] = x

        def read(atom: Any) -> V:
            return self.literal(atom) if isinstance(atom, jcore.Literal) else env[atom]

        for eqn in jaxpr.eqns:
            outs = self.dispatch(eqn, [read(a) for a in eqn.invars])
            for v, o in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(a) for a in jaxpr.outvars]


Visit = Callable[[Any, list[Any], list[Any]], None]


class _TaggedRun(JaxprWalker[tuple[Any, Any]]):
    """Values are ``(array or tracer, tag)``; the primitives are bound, ``visit`` first."""

    def __init__(self, visit: Visit):
        self.visit = visit

    def literal(self, atom):
        return atom.val, None

    def constant(self, var, value):
        return value, None

    def call(self, eqn, body, ins):
        # Tags do not leave the body of a call (only its primitives pass them through).
        return [(x, None) for x, _ in self.walk(body, ins)]

    def equation(self, eqn, ins):
        xs = [x for x, _ in ins]
        ts = [t for _, t in ins]
        self.visit(eqn, xs, ts)
        outs = eqn.primitive.bind(*xs, **eqn.params)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        tag = ts[0] if eqn.primitive.name in PASS_THROUGH else None
        return [(o, tag) for o in outs]


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

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.interpret import run_tagged
      >>> met = []
      >>> def visit(eqn, xs, ts):
      ...     if eqn.primitive.name == "dot_general":
      ...         met.append(ts)
      >>> y = run_tagged(lambda p, x: x @ p["w"].astype(x.dtype), {"w": jnp.ones((2, 3))},
      ...                (jnp.ones((1, 2)),), visit)
      >>> y.shape, met
      ((1, 3), [[None, 'w']])
    """
    closed, out_shape = jax.make_jaxpr(lambda t, r: fn(t, *r), return_shape=True)(
        tagged, tuple(rest)
    )
    flat, _ = jax.tree_util.tree_flatten_with_path(tagged)
    args = jax.tree.leaves((tagged, tuple(rest)))
    tags = [base.path_str(p) for p, _ in flat] + [None] * (len(args) - len(flat))
    outs = _TaggedRun(visit).walk(closed, list(zip(args, tags, strict=True)))
    return jax.tree.unflatten(jax.tree.structure(out_shape), [x for x, _ in outs])
