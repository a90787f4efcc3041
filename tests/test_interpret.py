"""The one jaxpr walker (``JaxprWalker``) and ``run_tagged``, its concrete client."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.interpret import CALLS, JaxprWalker, call_body, run_tagged, unwrap_jaxpr


class _Prims(JaxprWalker):
    """Records the primitives met and what each control-flow hook saw."""

    def __init__(self):
        self.seen = []
        self.calls = []

    def equation(self, eqn, ins):
        self.seen.append(eqn.primitive.name)
        return [None] * len(eqn.outvars)

    def call(self, eqn, body, ins):
        self.calls.append((eqn.primitive.name, len(ins)))
        return super().call(eqn, body, ins)


def _walk(fn, *args):
    w = _Prims()
    closed = jax.make_jaxpr(fn)(*args)
    outs = w.walk(closed, [None] * len(closed.jaxpr.invars))
    assert len(outs) == len(closed.jaxpr.outvars)
    return w


def test_enters_jit_remat_and_custom_derivative_bodies():
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    f.defjvp(lambda p, t: (f(p[0]), jnp.cos(p[0]) * t[0]))

    @jax.custom_vjp
    def g(x):
        return jnp.exp(x)

    g.defvjp(lambda x: (g(x), x), lambda x, ct: (ct * x,))

    def fn(x):
        y = jax.jit(lambda a: jnp.tanh(a))(x)
        y = jax.checkpoint(lambda a: jnp.log1p(a))(y)
        return g(f(y))

    w = _walk(fn, jnp.ones(3))
    assert w.seen == ["tanh", "log1p", "sin", "exp"]
    assert {name for name, _ in w.calls} <= set(CALLS)
    assert len(w.calls) == 4


def test_call_inputs_are_the_trailing_operands():
    w = _walk(lambda x, y: jax.jit(lambda a, b: a * b)(x, y), jnp.ones(2), jnp.ones(2))
    assert [n for _, n in w.calls] == [2] and w.calls[0][0] in ("pjit", "jit")
    assert w.seen == ["mul"]


def test_control_flow_defaults_to_one_equation():
    def fn(x):
        x = jax.lax.cond(x.sum() > 0, jnp.sin, jnp.cos, x)
        x = jax.lax.while_loop(lambda a: a.sum() < 100.0, lambda a: a * 2, x)
        return jax.lax.scan(lambda c, a: (c + a, c), x[0], x)[1]

    seen = _walk(fn, jnp.ones(3)).seen
    assert "sin" not in seen and "cos" not in seen  # bodies are the hooks' business
    assert {"cond", "while", "scan"} <= set(seen)


def test_literals_constants_and_dropped_outputs():
    class Vals(JaxprWalker):
        def __init__(self):
            self.literals = 0

        def literal(self, atom):
            self.literals += 1
            return ("lit", atom.val)

        def constant(self, var, value):
            return ("const", None if value is None else np.asarray(value).shape)

        def equation(self, eqn, ins):
            return [("out", eqn.primitive.name, tuple(ins))] * len(eqn.outvars)

    c = np.arange(3.0)
    closed = jax.make_jaxpr(lambda x: x * 2.0 + jnp.asarray(c))(jnp.ones(3))
    w = Vals()
    (out,) = w.walk(closed, [("in",)])
    assert out[0] == "out"
    assert w.literals >= 1
    # one jaxpr, one environment: nothing leaks between walks
    assert w.walk(closed, [("in",)]) == [out]


def test_unwrap_and_call_body():
    closed = jax.make_jaxpr(lambda x: jax.jit(jnp.sin)(x))(1.0)
    jaxpr, consts = unwrap_jaxpr(closed)
    assert consts == [] and unwrap_jaxpr(jaxpr) == (jaxpr, [])
    (eqn,) = jaxpr.eqns
    body = call_body(eqn)
    assert [e.primitive.name for e in unwrap_jaxpr(body)[0].eqns] == ["sin"]
    sin_eqn = unwrap_jaxpr(body)[0].eqns[0]
    assert call_body(sin_eqn) is None


def test_run_tagged_follows_tags_through_dtype_conversions_and_jit():
    met = []

    def visit(eqn, xs, ts):
        if eqn.primitive.name == "dot_general":
            met.append(ts[1])

    def fn(p, x):
        h = x @ p["a"].astype(jnp.float16).astype(jnp.float32)
        return jax.jit(lambda h, k: h @ k)(h, p["b"])

    p = {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 4))}
    x = jnp.ones((1, 2))
    y = run_tagged(fn, p, (x,), visit)
    np.testing.assert_allclose(y, fn(p, x))
    assert met == ["a", "b"]


def test_run_tagged_tags_do_not_leave_a_call_body():
    met = []

    def visit(eqn, xs, ts):
        if eqn.primitive.name == "dot_general":
            met.append(ts[1])

    def fn(p, x):
        k = jax.jit(lambda k: k.astype(jnp.float16))(p["w"])
        return x @ k.astype(jnp.float32)

    run_tagged(fn, {"w": jnp.ones((2, 3))}, (jnp.ones((1, 2)),), visit)
    assert met == [None]


def test_run_tagged_under_jit_sees_tracers():
    kinds = []

    def visit(eqn, xs, ts):
        if eqn.primitive.name == "dot_general":
            kinds.append(isinstance(xs[0], jax.core.Tracer))

    f = jax.jit(lambda p, x: run_tagged(lambda p, x: x @ p["w"], p, (x,), visit))
    y = f({"w": jnp.ones((2, 3))}, jnp.ones((1, 2)))
    assert y.shape == (1, 3) and kinds == [True]
