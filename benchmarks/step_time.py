"""Step time of a learned optimizer against optax.adamw, measured in one process.

    .venv/bin/python benchmarks/step_time.py                 # the default arch, 100k and 2M MLPs
    .venv/bin/python benchmarks/step_time.py --arch mlp --sizes 2m 25m lm --set impl=reference
    .venv/bin/python benchmarks/step_time.py --impls fused native reference --repeats 40

For each model (MLPs by size; "lm": a 4-layer width-256 transformer LM, sequence 128, batch 32,
from tasks/models/transformer.py) it times (median over repeats, after compilation):
  full step   = forward + backward + optimizer update + apply, batch 128
  update only = optimizer update + apply, on fixed gradients
and prints both times and the ratio learned / adamw. Buffers are donated, as in real training.
The timed calls of AdamW and of every learned-optimizer variant (--impls) are interleaved, one
call of each per repeat, so that a shared machine's slow moments hit all of them alike.
It also reports the optimizer state's bytes per parameter, and the per-parameter network's
FLOPs divided by the update time against a plain f32 matmul's FLOP/s measured in the same run
(a lower bound: the update also computes features and statistics). For impl=native it also
times the per-element pass alone (the kernel: accumulators, features, the network and the
update for every parameter, without the per-tensor work around it), the "MLP part", against
both limits: the matmul's FLOP/s and the memory bandwidth of XLA's own elementwise loop.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import learned_opt

# Hidden widths of a 784 -> ... -> 10 MLP, named by approximate parameter count.
SIZES = {
    "100k": (128, 128),  # 118k
    "2m": (1024, 1024),  # 1.86M, the size quoted in the performance issue
    "25m": (3072, 3072, 3072),  # 21M
}
BATCH = 128


def mlp_params(key, hidden):
    sizes = (784, *hidden, 10)
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (i, o)) / jnp.sqrt(i), "b": jnp.zeros((o,))}
        for k, i, o in zip(keys, sizes[:-1], sizes[1:])
    ]


def lm_setup(key):
    """(params, loss_fn(params, x, y), x, y) for the transformer benchmark (standard param.)."""
    from tasks.models.transformer import TransformerConfig

    config = TransformerConfig(width=256, depth=4, num_heads=4, max_len=128, parametrization="standard")
    model = config.module()
    tokens = jax.random.randint(key, (32, config.max_len + 1), 0, config.vocab_size)
    x, y = tokens[:, :-1], tokens[:, 1:]
    params = model.init(jax.random.key(1), x)["params"]

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss_fn, x, y


def mlp_loss(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def compiled_steps(tx, params, x, y, loss_fn=mlp_loss):
    """(full, update_only): jitted steps that donate and return (params, state)."""

    def full(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params, loss=loss)
        return optax.apply_updates(params, updates), state

    grads = jax.grad(loss_fn)(params, x, y)

    def update_only(params, state):
        updates, state = tx.update(grads, state, params, loss=jnp.float32(1.0))
        return optax.apply_updates(params, updates), state

    return jax.jit(full, donate_argnums=(0, 1)), jax.jit(update_only, donate_argnums=(0, 1))


def interleaved_medians(fns_and_args, repeats):
    """Median seconds per call of each fn, timing one call of each in turn per repeat.

    Each fn returns its (donated) args' replacements, which feed its next call.
    """
    args = []
    for fn, a in fns_and_args:  # compile + warm up
        a = fn(*a)
        jax.block_until_ready(a)
        args.append(a)
    times = [[] for _ in fns_and_args]
    for _ in range(repeats):
        for i, (fn, _) in enumerate(fns_and_args):
            t0 = time.perf_counter()
            args[i] = fn(*args[i])
            jax.block_until_ready(args[i])
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


PASSES_PER_CALL = 4


def native_pass(arch, params):
    """A jitted call of PASSES_PER_CALL native per-element passes in turn on every leaf (as in
    the update, with random inputs), and its donated arguments: the kernel's share of the
    update. Several passes a call, so that jit's dispatch (~20-40 us here, absent inside a
    training step) does not count as the kernel's time."""
    from learned_opt import native
    from learned_opt.tree_util import matrix_shape

    spec = native.KernelSpec(len(arch.momentum_decays), len(arch.adafactor_decays), arch.hidden_sizes)
    e, o, na = spec.num_elementwise, spec.num_outputs, spec.n_adafactor
    acc_dtype = jnp.dtype(arch.accumulator_dtype)
    theta = arch.init_theta(jax.random.key(0))
    rest = native.pack_rest(theta["mlp"][1:])
    scal = native.pack_scalars(arch.momentum_decays, arch.rms_decay, 10.0, arch.exp_mult, jnp.float32(1e-3))
    w0 = jax.random.normal(jax.random.key(1), (e, o)) * 0.1
    ones = lambda *shape: jnp.ones(shape, jnp.float32)  # noqa: E731
    fixed, state = [], []
    for leaf in jax.tree.leaves(params):
        r, c = matrix_shape(leaf.shape)
        fixed.append((leaf.reshape(r, c), jnp.sin(leaf).reshape(r, c), ones(o, r), ones(o, c), ones(na, r), ones(na, c)))
        state.append((jnp.zeros((spec.n_momenta, r, c), acc_dtype), jnp.ones((r, c), jnp.float32)))  # v: f32

    def one_pass(_, state):
        out = []
        for (p, g, rowb, colb, srow, scol), (m, v) in zip(fixed, state):
            _, m, v = native.step(spec, p, g, m, v, w0, rowb, colb, srow, scol, rest, scal)
            out.append((m, v))
        return out

    def run(state):
        return (jax.lax.fori_loop(0, PASSES_PER_CALL, one_pass, state),)

    return jax.jit(run, donate_argnums=0), (state,)


def stream_bytes_per_s(repeats: int, n: int = 16 * 2**20) -> float:
    """Memory bandwidth of XLA's own elementwise loop, out = 1.5 x + y on n f32 (two reads,
    one write; 192 MB, far over any cache): the other limit of the per-element pass."""
    x, y = jnp.ones((n,), jnp.float32), jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda x, y: (x, 1.5 * x + y), donate_argnums=(0, 1))
    (t,) = interleaved_medians([(f, (x, y))], repeats)
    return 3 * 4 * n / t


def native_pass_bytes(arch, params) -> int:
    """Bytes the native pass reads and writes: p, g, m and v in; update, m and v out (v is f32)."""
    acc = jnp.dtype(arch.accumulator_dtype).itemsize
    n_m = len(arch.momentum_decays)
    return sum(x.size * (3 * x.dtype.itemsize + 2 * (n_m * acc + 4)) for x in jax.tree.leaves(params))


def network_flops_per_param(arch) -> int:
    """FLOPs of the per-parameter network alone (multiply-adds x 2, skip included): a lower
    bound on the update's work, which also computes features and accumulators."""
    sizes = (arch.num_tensor_features, *arch.hidden_sizes, 2)
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + arch.num_tensor_features
    return 2 * macs


MATMUL_N = 2048


def matmul_flops_per_s(repeats: int) -> float:
    """FLOP/s of a plain f32 MATMUL_N x MATMUL_N matmul, the compute reference. Timed right
    before and after what it is compared with (the machine's speed drifts), not interleaved
    with it: its 48 MB would evict the update's data from cache between calls."""
    a = jax.random.normal(jax.random.key(0), (MATMUL_N, MATMUL_N), jnp.float32)
    (t,) = interleaved_medians([(jax.jit(lambda a, _: (a, a @ a)), (a, a))], repeats)
    return 2 * MATMUL_N**3 / t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mlp_small", choices=sorted(learned_opt.ARCHITECTURES))
    ap.add_argument("--sizes", nargs="+", default=["100k", "2m"], choices=sorted(SIZES) + ["lm"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--impls", nargs="+", choices=("fused", "native", "reference"),
                    help="MLPLOpt implementations to time side by side (default: the arch's own)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override MLPLOpt fields, e.g. impl=reference 'hidden_sizes=(8,)'")
    args = ap.parse_args(argv)

    arch = learned_opt.ARCHITECTURES[args.arch]
    fields = {f.name for f in dataclasses.fields(arch)}
    for item in args.set:
        field, eq, value = item.partition("=")
        if not eq or field not in fields:
            ap.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}.")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare string such as impl=reference
        arch = dataclasses.replace(arch, **{field: value})
    theta = arch.init_theta(jax.random.key(0))
    impls = args.impls or [arch.impl]
    lopts = {impl: learned_opt.to_optax(dataclasses.replace(arch, impl=impl), theta, num_steps=1000) for impl in impls}
    adamw = optax.adamw(1e-3)
    print(f"device: {jax.devices()[0].device_kind}  arch: {args.arch} {arch}")
    rule = getattr(arch, "rule", arch)  # the per-parameter network (velo: of its basis)
    print(f"meta-parameters: {learned_opt.num_params(theta):,}  per-parameter network: "
          f"{' -> '.join(map(str, (rule.num_features, *rule.hidden_sizes, 2)))}")
    net_flops = network_flops_per_param(rule)
    print(f"network: {net_flops} FLOPs per parameter; f32 matmul: {MATMUL_N}^3")
    print(f"{'size':>6} {'params':>10} {'impl':>9} | {'full adamw':>11} {'full lopt':>11} {'ratio':>7} | "
          f"{'upd adamw':>10} {'upd lopt':>10} {'ratio':>7} | {'net GFLOP/s':>11} {'of matmul':>9} | "
          f"{'state B/param':>13}")
    for size in args.sizes:
        if size == "lm":
            params, loss_fn, x, y = lm_setup(jax.random.key(2))
        else:
            params, loss_fn = mlp_params(jax.random.key(1), SIZES[size]), mlp_loss
            x = jax.random.normal(jax.random.key(2), (BATCH, 784))
            y = jax.random.randint(jax.random.key(3), (BATCH,), 0, 10)
        txs = [adamw, *lopts.values()]
        steps = [compiled_steps(tx, params, x, y, loss_fn) for tx in txs]
        copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
        fulls = interleaved_medians(
            [(full, (copy(params), tx.init(params))) for tx, (full, _) in zip(txs, steps)], args.repeats)
        matmul_before = matmul_flops_per_s(args.repeats)
        upds = interleaved_medians(
            [(upd, (copy(params), tx.init(params))) for tx, (_, upd) in zip(txs, steps)], args.repeats)
        if "native" in lopts:
            (t_pass,) = interleaved_medians([native_pass(rule, params)], args.repeats)
            t_pass /= PASSES_PER_CALL
        matmul = max(matmul_before, matmul_flops_per_s(args.repeats))  # the faster: conservative
        if "native" in lopts:
            stream = stream_bytes_per_s(args.repeats)
        n = learned_opt.num_params(params)
        adamw_bytes = sum(x.nbytes for x in jax.tree.leaves(adamw.init(params)))
        (fa, *fls), (ua, *uls) = fulls, upds
        for impl, lopt, fl, ul in zip(lopts, lopts.values(), fls, uls):
            achieved = net_flops * n / ul  # network FLOPs over the whole update's time
            state_bytes = sum(x.nbytes for x in jax.tree.leaves(lopt.init(params)))
            print(f"{size:>6} {n:>10,} {impl:>9} | {fa * 1e3:>9.2f}ms {fl * 1e3:>9.2f}ms {fl / fa:>6.2f}x | "
                  f"{ua * 1e3:>8.2f}ms {ul * 1e3:>8.2f}ms {ul / ua:>6.1f}x | "
                  f"{achieved / 1e9:>11.1f} {achieved / matmul:>8.1%} | "
                  f"{state_bytes / n:>5.1f} (adamw {adamw_bytes / n:.1f})")
        print(f"{'':>17} f32 matmul (before/after the updates, the faster): {matmul / 1e9:.0f} GFLOP/s")
        if "native" in lopts:
            achieved = net_flops * n / t_pass
            moved = native_pass_bytes(rule, params) / t_pass
            print(f"{'':>17} the native per-element pass alone: {t_pass * 1e3:.2f} ms, {achieved / 1e9:.1f} "
                  f"GFLOP/s of network = {achieved / matmul:.1%} of the matmul's; "
                  f"{moved / 1e9:.1f} GB/s moved = {moved / stream:.0%} of XLA's stream {stream / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
