"""VeLO-style learned optimizer: a per-tensor LSTM controller over a basis of per-parameter MLPs.

Per step, once per tensor (never per parameter), a small LSTM reads

* where training is: VeLO's fraction features tanh(10 (t/T - x)) and log T, T the `num_steps`
  the optimizer is built with;
* how the loss moves: EMAs of the (clipped) training loss with half-lives log-spaced from 10
  steps to T, each compared with the next slower one relative to the running minimum
  (VeLO's relative loss features; 0 for the first two steps);
* the tensor: log RMS(m_k / sqrt(v)) per momentum decay (near 0 while gradients agree, lower once
  they are noise), log RMS(p) and its rank;
* the mean of every tensor's LSTM state of the last step (VeLO's mixing across tensors).

It outputs a log step multiplier and softmax weights over `num_basis` per-parameter MLPs; the
tensor's per-parameter network is the weighted sum of the basis (weights, not outputs), and runs
in `MLPLOpt`'s reference, fused or native step with `MLPLOpt`'s features. The step of a tensor is

    update = d * exp(exp_mult * s) * exp(log_step + controller) * step_mult * scale

with scale = max(RMS(p), param_scale_floor) (VeLO and Celo: relative to the parameter's own
size; the floor is for tensors that start at zero) or, for `mu_velo`, mu-P's per-tensor factor
(learned_opt.mup, roles as everywhere else) with a fixed base step, as muLO.

The tensor statistics are those of the previous step: the per-parameter step computes every
feature's mean square for its normalizers anyway and hands them back, so the controller costs no
pass over any tensor. Every output head starts at zero and every basis member at per-tensor
Adam (`MLPLOpt.init_like_adam`, unnormalized Adam features): the untrained optimizer is Adam with a
base step, whatever the controller's random LSTM weights, and meta-training learns corrections.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from learned_opt import accumulators as acc_lib
from learned_opt import features as feat_lib
from learned_opt import mup
from learned_opt.mlp_lopt import MLPLOpt
from learned_opt.orthogonalize import orthogonalize_like

VELO_FRACTION_OFFSETS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
# Controller inputs per tensor (after the global ones): log RMS(m_k / sqrt v) per momentum decay,
# log RMS(p) / 5 (the rank, as [vector, matrix, higher], follows them).
_CONSISTENCY_RANGE = (-5.0, 1.0)
# The direct head's term in each tensor's log step is clipped to this range.
DIRECT_LOG_RANGE = (-8.0, 2.0)


class VeLOState(NamedTuple):
    """Optimizer state. N = the number of parameter tensors (leaves), H = `lstm_hidden`."""

    count: jax.Array  # i32[]
    accumulators: Any  # pytree like params of acc_lib.LeafAccumulators
    loss_ema_E: jax.Array  # f32[E], EMAs of the clipped loss, fastest first
    loss_min: jax.Array  # f32[], running minimum of the fastest EMA
    loss_max: jax.Array  # f32[], running maximum of the clipped loss
    lstm_h_NxH: jax.Array
    lstm_c_NxH: jax.Array
    stats_NxS: jax.Array  # f32[N, S], each tensor's statistics of the last step


@dataclasses.dataclass(frozen=True)
class _Rule(MLPLOpt):
    """MLPLOpt's per-parameter step whose per-tensor log step is the controller's (precomputed,
    in theta["tensor_log_step"]), plus log max(RMS(p), floor) for the parameter-relative step.

    RMS(p) is read from the normalizers' statistics (feature 0 is p), computed in the same pass."""

    param_scale_floor: float = 0.0

    def _tensor_log_step(self, theta, ctrl_glob, ms_E, shape):
        del ctrl_glob, shape
        log_step = theta["tensor_log_step"]
        if self.param_scale_floor > 0.0:
            log_step = log_step + 0.5 * jnp.log(jnp.maximum(ms_E[0], self.param_scale_floor**2))
        return log_step


@dataclasses.dataclass(frozen=True)
class VeLOLOpt:
    """Static configuration of the VeLO-style optimizer (module docstring).

    The per-parameter rule (each basis member): hidden_sizes, momentum_decays, rms_decay,
    adafactor_decays, time_scales, accumulator_dtype, impl, normalizer_samples, exp_mult and
    out_init_scale as in `MLPLOpt` (its Adam features unnormalized, its start per-tensor Adam).
    num_basis: per-parameter MLPs the controller mixes.
    lstm_hidden: the controller LSTM's state size.
    fraction_offsets: x of the tanh(10 (t/T - x)) features.
    num_loss_emas: loss EMAs (half-lives log-spaced from 10 steps to T); num_loss_emas - 1
        relative features. 0: the optimizer ignores the loss (and `update` does not need it).
    step_mult: the base step: relative to max(RMS(p), param_scale_floor) with `param_scale`,
        absolute (times mu-P's factor with `mup`) without.
    param_scale, param_scale_floor: take each tensor's step relative to its RMS.
    mup, base_fan_in: multiply each tensor's step by mu-P's factor (learned_opt.mup).
    schedule_decay: None (the default) for none, or the initial power p0 of a decay to the end
        shared by every tensor: the log step gains p * log((T - t) / T), p =
        max(theta["schedule_decay"], 0) (MLPLOpt's term). The LR head reads tanh fraction
        features, which saturate: it cannot reach zero at the end, and short meta-training
        leaves it flat there (the 500-outer-step mu_velo ends at ~6x its base step).
    bias_correction: add Adam's bias correction of the Adam feature (the momentum decay nearest
        0.9 over `rms_decay`) to every tensor's log step, so the untrained optimizer is Adam
        itself, not Adam with EMAs that start at zero, whose steps are up to 6.5x Adam's over
        the first hundreds of steps (`features.log_adam_bias_correction`). False keeps the
        shipped thetas' behaviour.
    early_head: a learned, per-tensor share k of that correction: the log step gains
        k * log_adam_bias_correction(t), k = a linear readout of the tensor's LSTM state
        (theta["early_head"], zero at the start: no change). The correction goes to 0 as t grows,
        so k sets only the early steps: k = 1 is Adam's, 0 the uncorrected basis's, < 0 larger
        still. With the level frozen (`trainable: [early_head]`) meta-training can then give a
        transformer smaller early steps than an MLP without moving anyone's later step.
    direct_head: a learned linear term from the controller's own inputs to each tensor's log
        step (theta["direct_head"]["w"], zero at the start: no change), with log((T - t) / T)
        beside them (`direct_features`). The LR head reads the inputs only through the frozen
        random LSTM; this reads each one directly, a few numbers PES can estimate: how the step
        follows gradient consistency (noise, not signal, at a stall), the loss features, the
        tensor's rank and scale, and a decay power to the end. Its sum is clipped to
        [`DIRECT_LOG_RANGE`], so no input can raise a step more than e^2-fold.
    orthogonalize: replace each hidden matrix's (and conv kernel's) update by its Newton-Schulz
        orthogonalization at the same RMS (`learned_opt.orthogonalize`, Muon's iteration; Celo2
        orthogonalizes its direction). The controller still sets each tensor's step size; this
        only evens out the directions within a matrix. Costs a few matmuls per matrix per step.
    weight_decay: a fixed, decoupled decay of every matrix and kernel (not vectors), AdamW's
        form with the tensor's own step as its learning rate: the update gains
        -weight_decay * exp(log step) * p. 0 (the default) for none. Only with absolute steps
        (param_scale=False, mu_velo): a step relative to RMS(p) has no learning rate to scale by.
    """

    name: ClassVar[str] = "velo_lopt"

    hidden_sizes: tuple[int, ...] = (4,)
    momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99)
    rms_decay: float = 0.999
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    time_scales: tuple[float, ...] = (1, 10, 100, 1000, 10000)
    accumulator_dtype: str = "bfloat16"
    impl: str = "native"
    normalizer_samples: int = 65536
    exp_mult: float = 1e-3
    out_init_scale: float = 1e-2
    num_basis: int = 4
    lstm_hidden: int = 16
    fraction_offsets: tuple[float, ...] = VELO_FRACTION_OFFSETS
    num_loss_emas: int = 6
    step_mult: float = 1e-2
    param_scale: bool = True
    param_scale_floor: float = 0.03
    mup: bool = False
    base_fan_in: int = 64
    schedule_decay: float | None = None
    bias_correction: bool = False
    early_head: bool = False
    direct_head: bool = False
    orthogonalize: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        for f in ("hidden_sizes", "momentum_decays", "adafactor_decays", "time_scales", "fraction_offsets"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        for f in ("num_basis", "lstm_hidden"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VeLOLOpt.{f}={v!r}: expected a positive int.")
        if isinstance(self.num_loss_emas, bool) or not isinstance(self.num_loss_emas, int) or self.num_loss_emas == 1 or self.num_loss_emas < 0:
            raise ValueError(
                f"VeLOLOpt.num_loss_emas={self.num_loss_emas!r}: expected 0 (no loss features) or an int >= 2 "
                "(each feature compares one EMA with the next slower one)."
            )
        if not self.fraction_offsets:
            raise ValueError("VeLOLOpt.fraction_offsets is empty: the controller needs the fraction of training.")
        for f in ("param_scale", "mup", "bias_correction", "early_head", "direct_head", "orthogonalize"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"VeLOLOpt.{f}={getattr(self, f)!r}: expected true or false.")
        if not self.param_scale and not self.mup:
            raise ValueError(
                "VeLOLOpt(param_scale=False, mup=False) would take one absolute step size for every "
                "tensor at every width: set param_scale=True (VeLO) or mup=True (mu_velo)."
            )
        if self.schedule_decay is not None and (
            isinstance(self.schedule_decay, bool)
            or not isinstance(self.schedule_decay, (int, float))
            or not 0 <= self.schedule_decay < math.inf
        ):
            raise ValueError(
                f"VeLOLOpt.schedule_decay={self.schedule_decay!r}: expected None or a finite power >= 0 "
                "(1.0: linear decay to zero at the end)."
            )
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or not (
            0 <= self.weight_decay < math.inf
        ):
            raise ValueError(f"VeLOLOpt.weight_decay={self.weight_decay!r}: expected a finite number >= 0 (0: none).")
        if self.weight_decay and self.param_scale:
            raise ValueError(
                f"VeLOLOpt.weight_decay={self.weight_decay!r} needs absolute steps (param_scale=False, as "
                "mu_velo): a step relative to RMS(p) has no learning rate to scale the decay by."
            )
        if not (isinstance(self.step_mult, (int, float)) and self.step_mult > 0):
            raise ValueError(f"VeLOLOpt.step_mult={self.step_mult!r}: expected a positive number.")
        if self.param_scale and not (isinstance(self.param_scale_floor, (int, float)) and self.param_scale_floor > 0):
            raise ValueError(
                f"VeLOLOpt.param_scale_floor={self.param_scale_floor!r}: expected a positive number (the "
                "smallest scale a tensor's step is taken relative to, for tensors that start at zero)."
            )
        # The per-parameter rule validates its own fields (sizes, decays, impl, dtype).
        object.__setattr__(self, "_rule", self._make_rule())

    def _make_rule(self) -> _Rule:
        return _Rule(
            hidden_sizes=self.hidden_sizes,
            momentum_decays=self.momentum_decays,
            rms_decay=self.rms_decay,
            adafactor_decays=self.adafactor_decays,
            time_scales=self.time_scales,
            exp_mult=self.exp_mult,
            step_mult=1.0,
            accumulator_dtype=self.accumulator_dtype,
            impl=self.impl,
            normalizer_samples=self.normalizer_samples,
            out_init_scale=self.out_init_scale,
            normalize_adam_features=False,
            init_like_adam=True,
            param_scale_floor=float(self.param_scale_floor) if self.param_scale else 0.0,
        )

    @property
    def rule(self) -> MLPLOpt:
        """The per-parameter rule each basis member is (its features, sizes and kernels)."""
        return self._rule

    # ---- sizes -------------------------------------------------------------------------------

    def controller_features(self) -> list[str]:
        """The LSTM's inputs, in order."""
        return (
            [f"frac{x:g}" for x in self.fraction_offsets]
            + ["log_horizon"]
            + [f"loss_rel{i}" for i in range(max(self.num_loss_emas - 1, 0))]
            + [f"log_rms_m{d}*rsqrt_v" for d in self.momentum_decays]
            + ["log_rms_p/5", "is_vector", "is_matrix", "is_higher"]
            + [f"mean_state{i}" for i in range(self.lstm_hidden)]
        )

    def direct_features(self) -> list[str]:
        """The direct head's inputs, in order: the LSTM's inputs without the mean state, then
        log((T - t) / T)."""
        return self.controller_features()[: -self.lstm_hidden] + ["log_remaining_fraction"]

    @property
    def loss_features(self) -> bool:
        """Whether `update` reads the loss (as `MLPLOpt.loss_features`)."""
        return self.num_loss_emas > 0

    @property
    def num_stats(self) -> int:
        return len(self.momentum_decays) + 1

    # ---- theta -------------------------------------------------------------------------------

    def init_theta(self, key: jax.Array) -> dict:
        """Basis members (each per-tensor Adam plus a small random MLP), LSTM weights, and zero
        output heads; deterministic in `key`."""
        k_basis, k_lstm = jax.random.split(key)
        members = [self._rule.init_theta(k) for k in jax.random.split(k_basis, self.num_basis)]
        basis = jax.tree.map(lambda *xs: jnp.stack(xs), *[{"mlp": m["mlp"], "skip": m["skip"]} for m in members])
        n_in, h = len(self.controller_features()), self.lstm_hidden
        w = jax.random.normal(k_lstm, (n_in + h, 4 * h), jnp.float32) / math.sqrt(n_in + h)
        # Forget gate bias 1 (gates ordered input, forget, cell, output).
        b = jnp.zeros((4 * h,), jnp.float32).at[h : 2 * h].set(1.0)
        # Top-level parts, so a recipe can meta-train a few numbers at a time (`trainable`).
        theta = {
            "basis": basis,
            "lstm": {"w": w, "b": b},
            "lr_head": {"w": jnp.zeros((h,), jnp.float32), "b": jnp.zeros((), jnp.float32)},
            "mix_head": {"w": jnp.zeros((h, self.num_basis), jnp.float32), "b": jnp.zeros((self.num_basis,), jnp.float32)},
            "log_step": jnp.zeros((), jnp.float32),
        }
        if self.schedule_decay is not None:
            theta["schedule_decay"] = jnp.asarray(self.schedule_decay, jnp.float32)
        if self.early_head:
            theta["early_head"] = {"w": jnp.zeros((h,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
        if self.direct_head:
            theta["direct_head"] = {"w": jnp.zeros((len(self.direct_features()),), jnp.float32)}
        return theta

    # ---- state -------------------------------------------------------------------------------

    def init_state(self, params: Any) -> VeLOState:
        rule_state = self._rule.init_state(params)
        leaves = jax.tree.leaves(params)
        n, e = len(leaves), self.num_loss_emas
        # The first step reads these statistics: gradients "agree" (0) and each tensor's own RMS.
        log_rms_p = [_log_rms_p_feature(jnp.mean(jnp.square(p.astype(jnp.float32)))) for p in leaves]
        stats = jnp.zeros((n, self.num_stats), jnp.float32).at[:, -1].set(jnp.stack(log_rms_p) if n else 0.0)
        return VeLOState(
            count=rule_state.count,
            accumulators=rule_state.accumulators,
            loss_ema_E=jnp.zeros((e,), jnp.float32),
            loss_min=jnp.zeros((), jnp.float32),
            loss_max=jnp.zeros((), jnp.float32),
            lstm_h_NxH=jnp.zeros((n, self.lstm_hidden), jnp.float32),
            lstm_c_NxH=jnp.zeros((n, self.lstm_hidden), jnp.float32),
            stats_NxS=stats,
        )

    # ---- update ------------------------------------------------------------------------------

    def update(self, theta, grads, state: VeLOState, params, *, loss=None, roles=None, num_steps=None):
        """(updates, new_state) for one step; `num_steps` (the length of training) is required, and
        `loss` too unless num_loss_emas is 0."""
        if params is None:
            raise ValueError("VeLOLOpt.update needs params (features and step scale read them): call tx.update(grads, state, params).")
        if num_steps is None:
            raise ValueError(
                "VeLOLOpt (velo, mu_velo) controls its step over the length of training and needs it: "
                "learned_opt.load(name, num_steps=N) or to_optax(arch, theta, num_steps=N), with N the "
                "number of training steps."
            )
        if self.num_loss_emas and loss is None:
            raise ValueError(
                "VeLOLOpt reads the training loss: call tx.update(grads, state, params, loss=loss_value) "
                "(optax.chain forwards it), or build it with num_loss_emas=0."
            )
        loss_parts, loss_rel = self._loss_features(state, loss, num_steps)
        glob_X = jnp.concatenate([self._horizon_features(state.count, num_steps), loss_rel])

        leaves_g, treedef = jax.tree.flatten(grads)
        leaves_p = treedef.flatten_up_to(params)
        leaves_acc = [acc_lib.as_leaf_accumulators(a) for a in treedef.flatten_up_to(state.accumulators)]
        leaf_roles = mup.resolve_roles(params, roles)
        n = len(leaves_g)
        if n == 0:
            raise ValueError("VeLOLOpt.update got params with no arrays: there is nothing to optimize.")
        rank_Nx3 = jnp.asarray(
            [[float(p.ndim <= 1), float(p.ndim == 2), float(p.ndim > 2)] for p in leaves_p], jnp.float32
        )
        h_prev, c_prev = jnp.asarray(state.lstm_h_NxH), jnp.asarray(state.lstm_c_NxH)
        x_NxI = jnp.concatenate(
            [
                jnp.broadcast_to(glob_X, (n, glob_X.shape[0])),
                jnp.asarray(state.stats_NxS),
                rank_Nx3,
                jnp.broadcast_to(jnp.mean(h_prev, axis=0), (n, self.lstm_hidden)),
            ],
            axis=1,
        )
        h_NxH, c_NxH = _lstm(theta["lstm"], x_NxI, h_prev, c_prev)
        log_lr_N = self.log_lr(theta, h_NxH)
        if self.direct_head:
            remaining = feat_lib.log_remaining_fraction(state.count, num_steps)
            direct_NxD = jnp.concatenate(
                [x_NxI[:, : -self.lstm_hidden], jnp.broadcast_to(remaining, (n, 1))], axis=1
            )
            log_lr_N = log_lr_N + jnp.clip(direct_NxD @ theta["direct_head"]["w"], *DIRECT_LOG_RANGE)
        if self.schedule_decay is not None:
            log_lr_N = log_lr_N + feat_lib.log_decay_to_end(theta["schedule_decay"], state.count, num_steps)
        if self.bias_correction or self.early_head:
            beta1 = self.momentum_decays[self._rule._adam_momentum_index()]  # the Adam start's
            log_bc = feat_lib.log_adam_bias_correction(state.count, beta1, self.rms_decay)
            share_N = 1.0 if self.bias_correction else 0.0
            if self.early_head:
                share_N = share_N + h_NxH @ theta["early_head"]["w"] + theta["early_head"]["b"]
            log_lr_N = log_lr_N + share_N * log_bc
        mix_NxK = jax.nn.softmax(h_NxH @ theta["mix_head"]["w"] + theta["mix_head"]["b"], axis=-1)
        # Each tensor's network: the basis weighted by its mixture (weights, not outputs).
        nets = jax.tree.map(lambda b: jnp.einsum("nk,k...->n...", mix_NxK, b), theta["basis"])

        rule = self._rule
        time_G = feat_lib.time_features(state.count, self.time_scales)
        n_t = rule.num_tensor_features
        first_ratio = rule._first_ratio_feature_index()
        updates, new_acc, stats = [], [], []
        for i, (g, p, acc, role) in enumerate(zip(leaves_g, leaves_p, leaves_acc, leaf_roles)):
            net = jax.tree.map(lambda x: x[i], nets)
            first = net["mlp"][0]
            first_bias_H = first["b"] + time_G @ first["w"][n_t:]
            shape = tuple(jnp.shape(p))
            scale = mup.update_scale(shape, role, self.base_fan_in) if self.mup else 1.0
            log_step = theta["log_step"] + math.log(self.step_mult * scale)
            leaf_theta = {"mlp": net["mlp"], "skip": net["skip"], "tensor_log_step": log_lr_N[i]}
            u, a, ms_E = rule._update_leaf(leaf_theta, first_bias_H, log_step, None, g, p, acc, role)
            if self.orthogonalize and role == "hidden" and len(shape) >= 2:
                u = orthogonalize_like(u)
            if self.weight_decay and len(shape) >= 2:
                lr = jnp.exp(log_step + log_lr_N[i])  # the tensor's step: AdamW's learning rate
                u = u - (self.weight_decay * lr * p).astype(u.dtype)
            updates.append(u)
            new_acc.append(a)
            consistency = jnp.clip(0.5 * jnp.log(ms_E[first_ratio : first_ratio + len(self.momentum_decays)] + 1e-30), *_CONSISTENCY_RANGE)
            log_rms_p = _log_rms_p_feature(ms_E[0])
            stats.append(jnp.concatenate([consistency, log_rms_p[None]]))
        new_state = VeLOState(
            count=state.count + 1,
            accumulators=treedef.unflatten(new_acc),
            loss_ema_E=loss_parts[0],
            loss_min=loss_parts[1],
            loss_max=loss_parts[2],
            lstm_h_NxH=h_NxH,
            lstm_c_NxH=c_NxH,
            stats_NxS=jnp.stack(stats),
        )
        return treedef.unflatten(updates), new_state

    def log_lr(self, theta, h_NxH):
        """Each tensor's log step multiplier from its controller state (a state's `lstm_h_NxH`:
        the multiplier the last step used)."""
        return h_NxH @ theta["lr_head"]["w"] + theta["lr_head"]["b"]

    def _horizon_features(self, count, num_steps):
        """Where training is: the fraction features and log T (centred on 600 steps, halved)."""
        return jnp.concatenate(
            [feat_lib.fraction_features(count, num_steps, self.fraction_offsets), feat_lib.log_horizon(num_steps)[None]]
        )

    def _loss_features(self, state, loss, num_steps):
        """((new EMAs, running min, running max), relative loss features (E - 1,))."""
        e = self.num_loss_emas
        if not e:
            z = jnp.zeros((), jnp.float32)
            return (jnp.asarray(state.loss_ema_E), z, z), jnp.zeros((0,), jnp.float32)
        first = state.count == 0
        loss = jnp.asarray(loss, jnp.float32)
        loss = jnp.where(jnp.isfinite(loss), loss, jnp.where(first, 0.0, state.loss_max * 2.0))
        # Clipped to twice the largest loss seen: one spike does not swamp every average.
        loss = jnp.where(first, loss, jnp.minimum(loss, 2.0 * state.loss_max))
        T = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 20.0)
        half_lives_E = 10.0 * (T / 10.0) ** (jnp.arange(e, dtype=jnp.float32) / (e - 1))
        decays_E = 0.5 ** (1.0 / half_lives_E)
        prev_E = jnp.where(first, loss, jnp.asarray(state.loss_ema_E))
        ema_E = decays_E * prev_E + (1.0 - decays_E) * loss
        loss_min = jnp.where(first, ema_E[0], jnp.minimum(state.loss_min, ema_E[0]))
        loss_max = jnp.where(first, loss, jnp.maximum(state.loss_max, loss))
        above_E = ema_E - loss_min
        rel = jnp.clip(above_E[:-1] / (jnp.abs(above_E[1:]) + 1e-8 * (jnp.abs(loss_min) + 1.0)) - 1.0, -1.0, 1.0)
        rel = jnp.where(state.count < 2, 0.0, rel)
        return (ema_E, loss_min, loss_max), rel


def _log_rms_p_feature(mean_square: jax.Array) -> jax.Array:
    """The controller's log RMS(p) input from p's mean square: clipped to [-10, 2], over 5."""
    return jnp.clip(0.5 * jnp.log(mean_square + 1e-30), -10.0, 2.0) / 5.0


def _lstm(params, x_NxI, h_NxH, c_NxH):
    """One LSTM step for every tensor at once (gates: input, forget, cell, output)."""
    z = jnp.concatenate([x_NxI, h_NxH], axis=1) @ params["w"] + params["b"]
    i, f, g, o = jnp.split(z, 4, axis=1)
    c = jax.nn.sigmoid(f) * c_NxH + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c
