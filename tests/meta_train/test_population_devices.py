"""run.population_devices: a worker's pairs split over local devices give the estimate and the
states of the unsplit worker (to float summation order), really split; bad counts are clear
errors. The split needs host devices set before JAX starts, hence the subprocess."""

import json
import os
import subprocess
import sys

import jax
import pytest

from meta_train import population_devices
from meta_train.config import RunConfig

_SPLIT_SCRIPT = r"""
import json, jax, numpy as np
from meta_train import population_devices as pd
assert pd.request_cpu_devices(2) == 2
from meta_train.config import load_config
from meta_train.recipe import make_components, make_worker

out = {"mesh_8": pd.population_mesh(8).size, "mesh_3": pd.population_mesh(3),
       "mesh_8_max1": pd.population_mesh(8, 1)}
from tests.meta_train.toy_lopt import MomentumLOpt
results = {}
# PES with the native kernel's custom calls inside the shards; truncated backprop, the gradient
# taken through the shards, with the two-number toy optimizer (fast to compile). ES runs PES's path.
for name, arch in (("pes", None), ("tbptt", MomentumLOpt())):
    runs = {}
    for devices in (1, 2):
        config = load_config("configs/smoke.yaml", [f"estimator.name={name}", f"run.population_devices={devices}"])
        parts = make_components(config, arch)
        worker = make_worker(config, parts, 0)
        theta = jax.tree.map(lambda x: x + 0.01, parts.arch.init_theta(jax.random.PRNGKey(1)))
        # Keys and theta committed to one device, as the learner's are.
        theta = jax.device_put(theta, jax.devices()[0])
        grads = [worker.compute(theta, jax.device_put(jax.random.PRNGKey(k), jax.devices()[0]))[0] for k in range(2)]
        states = worker.get_states()
        runs[devices] = (grads, states, {len(x.sharding.device_set) for x in jax.tree.leaves(states)})
    (g1, s1, d1), (g2, s2, d2) = runs[1], runs[2]
    close = lambda a, b: bool(all(np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    results[name] = {"grads_close": close(g1, g2), "states_close": close(s1, s2),
                     "grad_nonzero": bool(any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(g2[-1]))),
                     "devices_1": sorted(d1), "devices_2": sorted(d2)}
out["estimators"] = results
# The whole driver: learner, checkpoints and export around split workers.
import tempfile
from meta_train.train import meta_train
config = load_config("configs/smoke.yaml", ["run.num_steps=3", "run.progress=false", "run.population_devices=2"])
result = meta_train(config, tempfile.mkdtemp(), arch=MomentumLOpt())
out["driver_steps"] = int(result.step)
print(json.dumps(out))
"""


def test_split_population_gives_the_unsplit_estimate_on_two_host_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _SPLIT_SCRIPT], capture_output=True, text=True, env=env, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mesh_8"] == 2 and out["mesh_3"] is None and out["mesh_8_max1"] is None
    assert out["driver_steps"] == 3
    for name, r in out["estimators"].items():
        assert r["devices_1"] == [1] and r["devices_2"] == [2], (name, r)  # really split
        assert r["grad_nonzero"], name
        assert r["grads_close"] and r["states_close"], (name, r)


def test_one_device_is_no_split_and_runs_the_function_itself():
    assert population_devices.population_mesh(8, max_devices=1) is None
    fn = lambda x: x  # noqa: E731
    assert population_devices.map_shards(fn, (True,)) is fn
    if len(jax.local_devices()) == 1:
        assert population_devices.population_mesh(8) is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_device_counts_are_clear_errors(bad):
    with pytest.raises(ValueError, match="population_devices"):
        RunConfig(population_devices=bad)
    with pytest.raises(ValueError, match="population_devices"):
        population_devices.request_cpu_devices(bad)


def test_a_request_after_jax_started_keeps_the_devices_it_has():
    jax.devices()  # started
    assert population_devices.request_cpu_devices(3) == len(jax.devices("cpu"))
