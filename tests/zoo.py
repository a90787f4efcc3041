"""Tiny Linen models built from a widths config (field name == submodule name)."""

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    fc1: int = 12
    fc2: int = 10
    out: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.fc1, name="fc1")(x))
        x = nn.tanh(nn.Dense(self.fc2, name="fc2")(x))
        return nn.Dense(self.out, name="head")(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5: 431,080 parameters on 28x28x1 inputs."""

    conv1: int = 20
    conv2: int = 50
    fc1: int = 500

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.conv1, (5, 5), padding="VALID", name="conv1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Conv(self.conv2, (5, 5), padding="VALID", name="conv2")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.fc1, name="fc1")(x))
        return nn.Dense(10, name="fc2")(x)


class ConvBN(nn.Module):
    """Conv(16) -> BN -> ReLU -> Conv(8), eval-mode BN."""

    conv1: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.conv1, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.relu(x)
        return nn.Conv(8, (3, 3), name="conv2")(x)


class Residual(nn.Module):
    """Stem conv -> basic block with identity shortcut (add coupling) -> pooled head."""

    stem: int = 8
    a: int = 6

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.stem, (3, 3), name="stem")(x))
        y = nn.relu(nn.Conv(self.a, (3, 3), name="a")(h))
        y = nn.Conv(self.stem, (3, 3), name="b")(y)
        h = nn.relu(h + y)
        return nn.Dense(4, name="head")(jnp.mean(h, axis=(1, 2)))


class Dense2(nn.Module):
    """DenseNet-style: a conv output concatenated with the conv that reads it."""

    c1: int = 6
    c2: int = 4
    mix: int = 5

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(self.c1, (3, 3), name="c1")(x))
        b = nn.relu(nn.Conv(self.c2, (3, 3), name="c2")(a))
        h = jnp.concatenate([a, b], axis=-1)
        h = nn.Conv(self.mix, (1, 1), name="mix")(h)
        return nn.Dense(3, name="head")(jnp.mean(h, axis=(1, 2)))
