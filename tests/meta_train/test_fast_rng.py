"""meta_train.fast_rng: threefry on CPU as straight-line code, the same bits."""

import jax
import numpy as np
from jax.extend.random import threefry_2x32

from meta_train import fast_rng

# Random123's known answers for threefry2x32 with 20 rounds: (key, counter) -> output.
KNOWN = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def test_threefry_compiles_without_loops_and_gives_the_known_answers():
    assert fast_rng.use_unrolled_threefry_on_cpu() is True
    hash_fn = jax.jit(threefry_2x32)
    key, count = np.uint32(KNOWN[0][0]), np.uint32(KNOWN[0][1])
    assert " while(" not in hash_fn.lower(key, count).compile().as_text()
    for key, count, expected in KNOWN:
        out = hash_fn(np.uint32(key), np.uint32(count))
        assert [int(x) for x in out] == list(expected)


def test_random_draws_in_a_scan_are_unchanged():
    """A scanned fold_in + draw (the inner step's batch sampling) compiles to the scan alone."""
    fast_rng.use_unrolled_threefry_on_cpu()

    @jax.jit
    def draws(key):
        def step(carry, t):
            return carry, jax.random.randint(jax.random.fold_in(key, t), (4,), 0, 1000)
        return jax.lax.scan(step, 0, np.arange(5))[1]

    key = jax.random.PRNGKey(7)
    assert draws.lower(key).compile().as_text().count(" while(") == 1
    eager = np.stack([jax.random.randint(jax.random.fold_in(key, t), (4,), 0, 1000) for t in range(5)])
    np.testing.assert_array_equal(draws(key), eager)
