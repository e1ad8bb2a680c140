"""mu-P roles reach the learned optimizer during unrolls, so the readout is not scaled twice.

The task's model names its roles (`model.param_roles`, read by `tasks.base.mup_roles`); the unroll
passes them to the architecture, which uses them only when it scales by mu-P.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tests.meta_train.toy_lopt import MomentumLOpt

import learned_opt
from meta_train import unroll as unroll_lib
from tasks.models.mup import param_roles
from tasks.quadratic import QuadraticFamily, QuadraticTask

PARAMS = {
    "input": {"kernel": jnp.ones((8, 64)), "bias": jnp.zeros(64)},
    "hidden_1": {"kernel": jnp.ones((64, 64)), "bias": jnp.zeros(64)},
    "readout": {"dense": {"kernel": jnp.ones((64, 10)), "bias": jnp.zeros(10)}},
}


class _NamingModel:
    def param_roles(self, params):
        return {"w": "input"}


class NamedQuadratic(QuadraticTask):
    """A quadratic whose "model" names its one tensor's role, as `tasks.models` models do."""

    model = _NamingModel()


@dataclasses.dataclass(frozen=True)
class RolesSpy(MomentumLOpt):
    seen: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def update(self, theta, grads, state, params, *, loss=None, roles=None, num_steps=None):
        self.seen.append(roles)
        return super().update(theta, grads, state, params, loss=loss, roles=roles, num_steps=num_steps)


def test_the_unroll_passes_the_tasks_roles():
    cfg = unroll_lib.UnrollConfig(truncation_length=2, min_horizon=4, max_horizon=4)
    plain = QuadraticFamily(dim=3).sample(jax.random.key(0))
    for task, expected in ((plain, None), (NamedQuadratic(**vars(plain)), {"w": "input"})):
        arch = RolesSpy()
        state = unroll_lib.fresh_member(arch, cfg, jax.tree.map(lambda x: x[None], task), jax.random.key(1))
        unroll_lib.truncation(arch, cfg, arch.init_theta(None), task, state)
        assert arch.seen and all(r == expected for r in arch.seen)


def test_tasks_models_name_input_hidden_readout_and_vectors():
    roles = param_roles(PARAMS)
    assert roles["readout"]["dense"]["kernel"] == "output"
    assert roles["hidden_1"]["kernel"] == "hidden"
    assert roles["input"]["kernel"] == "input"
    assert roles["input"]["bias"] == roles["readout"]["dense"]["bias"] == "vector"


def test_readout_update_unscaled_at_any_width():
    """At 4x the base width, the hidden update shrinks 4x and the readout's does not."""
    arch = dataclasses.replace(learned_opt.ARCHITECTURES["mulo"], base_fan_in=16)
    theta = arch.init_theta(jax.random.key(0))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), PARAMS)
    u, _ = arch.update(theta, grads, arch.init_state(PARAMS), PARAMS, roles=param_roles(PARAMS))
    u_plain, _ = dataclasses.replace(arch, mup=False).update(theta, grads, arch.init_state(PARAMS), PARAMS)
    np.testing.assert_allclose(u["hidden_1"]["kernel"], u_plain["hidden_1"]["kernel"] * 16 / 64, rtol=1e-5)
    np.testing.assert_allclose(u["readout"]["dense"]["kernel"], u_plain["readout"]["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(u["input"]["kernel"], u_plain["input"]["kernel"], rtol=1e-6)
