"""The VeLO-style controller learns a schedule over the horizon it is told, through this repo's
meta-training (PES on noisy quadratics of random horizons), and only because it is told it.

Only the LR head (9 numbers) is meta-trained; the LSTM keeps its random weights, so the head
reads random nonlinear functions of the controller's inputs. On a noisy quadratic a large early
step gets close fast and a small late one averages out the noise, so with the end-weighted
meta-loss the best multiplier falls toward the end of each run, whatever its length.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt.velo import VeLOLOpt
from meta_train.config import load_config
from meta_train.train import meta_train
from tasks.quadratic import QuadraticFamily

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
SMALL = dict(hidden_sizes=(4,), num_basis=1, lstm_hidden=8, num_loss_emas=0, impl="fused", accumulator_dtype="float32")
OVERRIDES = [
    "tasks.kwargs.dim=8", "tasks.kwargs.noise_std=1.0", "tasks.pool_size=8",
    "estimator.name=pes", "estimator.num_pairs=8", "estimator.sigma=0.1",
    "unroll.truncation_length=10", "unroll.min_horizon=20", "unroll.max_horizon=160",
    "unroll.meta_loss_weight_power=3", "optimizer.trainable=[lr_head]",
    "run.num_steps=400", "run.progress=false", "run.checkpoint_every=1000", "run.log_every=1000",
    "outer.learning_rate=0.05", "outer.warmup_steps=0",
]


class _Blind(VeLOLOpt):
    """The ablation: the fraction features and log T zeroed."""

    def _horizon_features(self, count, num_steps):
        return jnp.zeros((len(self.fraction_offsets) + 1,), jnp.float32)


def _schedule(arch, theta, horizon):
    """The log step multiplier the controller gives at each step of one quadratic run."""
    task = QuadraticFamily(dim=8, noise_std=1.0).sample(jax.random.key(100))
    tx = learned_opt.to_optax(arch, theta, num_steps=horizon)

    @jax.jit
    def step(params, state, key):
        loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(key))
        updates, state = tx.update(grads, state, params, loss=loss)
        return jax.tree.map(jnp.add, params, updates), state, arch.log_lr(theta, state.lstm_h_NxH)[0]

    params = task.init(jax.random.key(0))
    state, out = tx.init(params), []
    for t in range(horizon):
        params, state, log_lr = step(params, state, jax.random.key(t))
        out.append(float(log_lr))
    return np.asarray(out)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """{"told": ..., "blind": ...}: each one's schedules at horizons 40 and 160 after meta-training."""
    out = {}
    for name, cls in (("told", VeLOLOpt), ("blind", _Blind)):
        arch = cls(**SMALL)
        result = meta_train(load_config(SMOKE, OVERRIDES), str(tmp_path_factory.mktemp(name)), arch=arch)
        assert result.step == 400
        untouched = arch.init_theta(jax.random.fold_in(jax.random.PRNGKey(0), 1))
        for part in ("lstm", "basis", "mix_head", "log_step"):  # trainable=[lr_head] only
            for a, b in zip(jax.tree.leaves(result.theta[part]), jax.tree.leaves(untouched[part])):
                np.testing.assert_array_equal(a, b)
        out[name] = {T: _schedule(arch, result.theta, T) for T in (40, 160)}
    return out


def test_the_learned_step_falls_toward_the_end_of_every_horizon(learned):
    for horizon, s in learned["told"].items():
        assert s[-1] < s[horizon // 10] - 0.4, (horizon, s[[horizon // 10, horizon // 2, -1]])


def test_the_learned_step_depends_on_num_steps(learned):
    """Step 39 ends a 40-step run but is a quarter into a 160-step one."""
    told = learned["told"]
    assert told[40][39] < told[160][39] - 0.3, (told[40][39], told[160][39])


def test_without_the_horizon_features_it_cannot(learned):
    """Blind to t / T and T, the controller gives the same step at step 39 of both runs, so it
    cannot fall at the end of the short run and hold in the long one; and it learned no fall
    at the end of the short run."""
    blind = learned["blind"]
    np.testing.assert_allclose(blind[40], blind[160][:40], atol=1e-6)
    assert blind[40][-1] > blind[40][4] - 0.2, blind[40][[4, 20, -1]]


def test_velo_meta_trains_with_truncated_backprop(tmp_path):
    """Gradients through the controller, the mixture and the per-parameter step (PES runs above
    and on Ray in tests/meta_train/test_ray.py; ES shares PES's antithetic code)."""
    config = load_config(SMOKE, ["run.num_steps=2", "run.progress=false", "optimizer.architecture=velo",
                                 "estimator.name=tbptt", "unroll.max_horizon=20"])
    result = meta_train(config, str(tmp_path))
    assert result.step == 2 and result.export_path is not None
    arch, theta, _ = learned_opt.load_theta(result.export_path)
    assert isinstance(arch, VeLOLOpt)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta))
