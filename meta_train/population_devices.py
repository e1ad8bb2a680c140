"""A worker's population split over the local devices: pairs in parallel, one shard per device.

Why: a meta-training population is many tiny, independent inner trainings. On CPU, XLA runs
each of their kernels (a 16 x (128 x 40) @ (40 x 32) batched matmul, a per-tensor statistic)
with intra-op threads, and for kernels this small the threads mostly wait on each other. Split
over host devices instead (`jax_num_cpu_devices`), each core runs its own share of the pairs
start to finish with no synchronization in the scan: issue 18's setup ran 2.0x the inner
steps/s on 2 cores (docs/design_notes.md). On a multi-GPU or TPU host the same split puts one
share on each accelerator.

    request_cpu_devices(n)            # before JAX starts: n host devices (the CLI and Ray actors)
    mesh = population_mesh(num_pairs) # None when there is nothing to split
    with jax.set_mesh(mesh):          # traced under it, map_population shards over the pairs
        grad, states, metrics = estimate(theta, pool, states, key)

The estimate is the same function with or without the mesh: only `unroll.map_population` (the
inner trainings) runs per shard; noise, accumulators and the gradient's mean over pairs stay
global, so the result equals the one-device estimate up to float summation order (tested).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

POPULATION_AXIS = "population"

LOG = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_count(count: Any) -> None:
    """`run.population_devices` is an int >= 0; a clear error otherwise."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(
            f"run.population_devices={count!r}: expected an int >= 0 (0: one device per core or "
            "every accelerator, 1: no split, n: split each worker's pairs over at most n devices)."
        )


def request_cpu_devices(count: int) -> int:
    """Ask JAX for `count` host (CPU) devices (0: one per available core); returns how many the
    CPU backend will have.

    Only possible before JAX's backends start. After that the request is logged and the
    existing count kept, so a notebook or a test that already ran JAX still works, unsplit.
    Accelerator backends are unaffected: on a GPU or TPU host the population splits over those.
    """
    check_count(count)
    want = count or available_cores()
    try:
        jax.config.update("jax_num_cpu_devices", want)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have != want:
            LOG.info("JAX already started with %d CPU device(s); %d requested for the population split "
                     "(set it before any JAX call to get it).", have, want)
        return have
    return want


def population_mesh(num_pairs: int, max_devices: int = 0) -> Mesh | None:
    """A 1-D mesh over the default backend's local devices for `num_pairs` pairs, or None.

    Uses the largest device count that divides `num_pairs` (every shard the same size) and is at
    most `max_devices` (0: no limit). None where that is 1.
    """
    devices = jax.local_devices()
    limit = min(len(devices), max_devices or len(devices), num_pairs)
    count = max(d for d in range(1, limit + 1) if num_pairs % d == 0)
    if count == 1:
        return None
    return Mesh(devices[:count], (POPULATION_AXIS,), axis_types=(AxisType.Auto,))


def sharded(mesh: Mesh, tree: Any) -> Any:
    """`tree` (population state: every leaf's leading axis is the pairs) split over `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(POPULATION_AXIS)))


def replicated(mesh: Mesh, tree: Any) -> Any:
    """`tree` (theta, a task pool) copied to every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def active_size() -> int:
    """The population axis' size in the mesh being traced under (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if POPULATION_AXIS not in mesh.axis_names:
        return 1
    return int(mesh.shape[POPULATION_AXIS])


def map_shards(fn: Callable, per_pair: tuple[bool, ...]) -> Callable:
    """`fn` run per shard of the pairs when traced under a population mesh, else `fn` itself.

    per_pair[i]: whether positional argument i has the pairs as its leading axis (split) or is
    shared by all pairs (copied to every shard). Every output has the pairs leading.
    """
    if active_size() == 1:
        return fn
    spec = PartitionSpec(POPULATION_AXIS)
    in_specs = tuple(spec if split else PartitionSpec() for split in per_pair)
    # The shards never communicate; check_vma=False since the native kernels' custom calls
    # carry no varying-axis types.
    return jax.shard_map(fn, in_specs=in_specs, out_specs=spec, check_vma=False)
