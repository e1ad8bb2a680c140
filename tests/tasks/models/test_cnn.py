"""PatchConv is flax's SAME convolution (parameters, initialization and output), computed as
patches times the kernel matrix, so that a vmap over members' kernels is a batched matmul."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks.models.cnn import PatchConv


@pytest.mark.parametrize("in_ch, out_ch, stride, size", [(1, 8, 1, 8), (16, 32, 2, 8), (3, 5, 2, 7)])
def test_patch_conv_is_flax_conv(in_ch, out_ch, stride, size):
    x = jax.random.normal(jax.random.key(0), (4, size, size, in_ch))
    conv = nn.Conv(out_ch, (3, 3), strides=stride, padding="SAME")
    patch = PatchConv(out_ch, (3, 3), strides=stride)
    params, params_patch = conv.init(jax.random.key(1), x), patch.init(jax.random.key(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(params_patch)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_patch)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    np.testing.assert_allclose(np.asarray(patch.apply(params, x)), np.asarray(conv.apply(params, x)),
                               rtol=1e-5, atol=1e-5)
    # Vmapped over members' kernels (as meta-training runs it), still the same per member.
    kernels = jnp.stack([params["params"]["kernel"], -params["params"]["kernel"]])
    one = lambda k: patch.apply({"params": {"kernel": k, "bias": params["params"]["bias"]}}, x)  # noqa: E731
    both = jax.vmap(one)(kernels)
    np.testing.assert_allclose(np.asarray(both[1]), np.asarray(one(kernels[1])), rtol=1e-5, atol=1e-5)
