"""The per-parameter MLP learned optimizer (small_fc_lopt / AdafacMLP family, with optional muLO).

For every scalar parameter, a small MLP reads features of its gradient history and emits a
direction d and a log-magnitude s; the update is

    update = d * exp(exp_mult * s + log_step) * step_mult * mup_scale(tensor)

where log_step is a learned scalar (0 at init), plus, with `fraction_offsets`, a learned
schedule: a tiny MLP of the fraction of training t / T (VeLO's tanh features; T is the
`num_steps` the optimizer is built with) and, with `loss_features`, of the loss, whose output
is added to log_step. It is once per step, not per parameter, and starts at 0 (the same step
at every t), so meta-training can learn warm-up and decay-to-the-end for runs of any length.
With `controller_hidden`, a per-tensor controller adds its own term to each tensor's log step:
a tiny MLP, once per tensor per step, of where training is (t / T and log T) and of how
consistent that tensor's gradients are (the RMS of m / sqrt(v) at each momentum decay: near 1
while gradients agree, near sqrt((1 - beta) / (1 + beta)) once they are noise). A schedule of
t / T alone sets one level for every task and tensor; tuned learning rates differ per task.
`controller_linear` is the few-number version: a linear function of log T, those consistency
features and is_vector (step x RMS(m / sqrt(v))^a per decay), cheap for the outer loop to fit.

Features (each divided by its RMS over the tensor, estimated on a strided grid of at most
`normalizer_samples` elements; `feature_names()` lists them in order):
parameter, gradient, clipped gradient, momenta at several decays, rsqrt of the second moment,
momenta times that rsqrt (Adam-like directions), Adafactor factored statistics (row, column,
gradient and momentum divided by their sqrt), plus global features: tanh(step / tau) at several
time scales and, optionally, loss features. With the defaults there are 39 inputs.

A linear skip from the per-tensor features to d lets `init_theta` start from a known-good rule:
with `init_like_adam`, the initial optimizer is per-tensor-normalized Adam (beta1 = 0.9,
beta2 = rms_decay) with learning rate step_mult (Adam itself, without bias correction, with
`normalize_adam_features=False`), and the MLP, whose last layer starts small,
learns corrections. Meta-training starts from a working optimizer instead of noise.

Two implementations of the network share everything else (state, theta, features):
"reference" stacks each tensor's features and uses matmuls (clear; the one others are tested
against; the right choice for large hidden sizes and on matrix units), "fused"
(learned_opt.fused) evaluates it elementwise without materializing features (several times
faster on CPU for the small networks it accepts; benchmarks/step_time.py). A third, "native",
runs the per-element work as one C++ loop per tensor (learned_opt.native; its per-tensor glue
is learned_opt.mlp_native_step), for networks up to muLO's size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from learned_opt import accumulators as acc_lib
from learned_opt import features as feat_lib
from learned_opt import fused, mlp_native_step, mup, native_build
from learned_opt import normalizers as norm_lib
from learned_opt.tree_util import matrix_shape

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_IMPLS = ("fused", "native", "reference")


class MLPLOptState(NamedTuple):
    """Optimizer state. Accumulator leaves mirror params (on each tensor's (R, C) view)."""

    count: jax.Array  # i32[], steps taken
    accumulators: Any  # pytree like params of acc_lib.LeafAccumulators
    loss_ema_L: jax.Array  # f32[L], running averages of the loss (L = 0 without loss features)


@dataclasses.dataclass(frozen=True)
class MLPLOpt:
    """Static configuration of the per-parameter MLP learned optimizer.

    hidden_sizes: widths of the MLP's hidden layers, e.g. (32, 32) or (8,).
    momentum_decays / rms_decay / adafactor_decays: EMA decay rates of the gradient statistics.
    time_scales: tau of the tanh(step / tau) global features.
    loss_features: also read the training loss (then `update` needs `loss=`).
    step_mult, exp_mult: output scales; see the module docstring.
    mup: scale each tensor's update by mu-P (learned_opt.mup), relative to `base_fan_in`.
    accumulator_dtype: "float32" or "bfloat16" storage for the momenta (math is f32). Second
        moments are always stored in f32: a bf16 EMA of decay 0.999 cannot decay
        (learned_opt.accumulators).
    init_like_adam: start theta as per-tensor-normalized Adam (see module docstring).
    out_init_scale: std of the last layer at init, relative to 1/sqrt(fan_in): small, so the MLP
        starts as a small correction.
    impl: "reference" (stacked features, matmuls), "fused" (elementwise XLA, small networks
        only; learned_opt.fused) or "native" (the per-element work as one native CPU loop per
        tensor, compiled on first use, the XLA form elsewhere and under differentiation; up to
        muLO's 39 -> 32 -> 32, `native_build.MAX_NATIVE_MACS`; learned_opt.native). Same
        state, same theta, same result to float tolerance.
    normalize_adam_features: divide the Adam-like ratios (m * rsqrt(v), g and m * rsqrt of
        Adafactor's factored v) by their RMS over the tensor like every other feature (True, the
        original design), or keep them at their own scale (False). They are scale-free and O(1)
        already; normalized, every tensor's update keeps the same RMS all through training, so
        the optimizer cannot shrink its steps as Adam does when gradients turn to noise (the
        untrained optimizer then stalls at a loss floor where Adam converges).
    fraction_offsets: with offsets, the learned schedule above reads tanh(10 (t/T - x)) for each
        x, and `update` needs `num_steps`; empty (the default) has no schedule and ignores it.
    schedule_hidden: hidden units of the schedule's MLP.
    schedule_decay: None (the default) for none, or the initial power p0 of a learned polynomial
        decay to the end that comes with the schedule: the log step gains
        p * log((T - t) / T), p = max(theta["schedule_decay"], 0) starting at p0 (1.0: linear
        decay to zero). The schedule MLP is bounded (its tanh features saturate) and cannot
        reach zero at the end; tuned schedules decay to near zero and win on long runs. Start
        p0 away from 0: at 0 half of a perturbation is clamped and the meta-gradient fades.
    controller_hidden: 0 (the default) for none, or the hidden units of the per-tensor step
        controller (module docstring; `controller_features()` lists its inputs). Its output
        layer starts at 0: added to a trained theta, it changes nothing until meta-trained.
        Needs fraction_offsets (it reads the fraction of training).
    controller_linear: a linear per-tensor controller instead (controller_hidden stays 0): its
        term is w . [log T, log RMS(m_k / sqrt(v)) per momentum decay, is_vector] + b, zero at
        start. One number per input: where an MLP controller's ~130 numbers leave each
        coordinate of an antithetic meta-gradient estimate mostly noise, these few are fitted.
    controller_decay_terms: the linear controller also reads log((T - t) / T) x log RMS(m_k /
        sqrt(v)) per momentum decay: a per-tensor change of the decay power, so the step can
        decay where gradients are noise and hold where they still agree (memorizing tasks,
        whose gradients have no noise floor, lose to decaying schedules).
    controller_depth: the linear controller also reads log(M / 3), M the number of weight
        tensors of 2 or more dimensions in the model (its layer count for an MLP or a CNN): a
        learned power of the depth in every tensor's step. mu-P fixes a step's size across
        widths, not depths, and a controller meta-trained at depths 2-6 otherwise sets one level
        for all of them (depth 8 is where the decay-terms controller broke). Static per model.
    normalizer_samples: a tensor's feature normalizers (RMS over the tensor) are estimated on a
        strided grid of at most this many of its elements, exact where the grid is not
        representative (learned_opt.normalizers); 0 uses every element. Tensors up to this
        size are normalized exactly.
    """

    name: ClassVar[str] = "mlp_lopt"

    hidden_sizes: tuple[int, ...] = (32, 32)
    momentum_decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    time_scales: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
    loss_features: bool = False
    loss_decays: tuple[float, ...] = (0.9, 0.99)
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    mup: bool = False
    base_fan_in: int = 64
    accumulator_dtype: str = "float32"
    init_like_adam: bool = True
    out_init_scale: float = 1e-2
    impl: str = "reference"
    normalizer_samples: int = 65536
    normalize_adam_features: bool = True
    fraction_offsets: tuple[float, ...] = ()
    schedule_hidden: int = 8
    schedule_decay: float | None = None
    controller_hidden: int = 0
    controller_linear: bool = False
    controller_decay_terms: bool = False
    controller_depth: bool = False

    def __post_init__(self):
        # Accept lists (from JSON / YAML) but store tuples so the dataclass stays hashable.
        for f in ("hidden_sizes", "momentum_decays", "adafactor_decays", "time_scales", "loss_decays", "fraction_offsets"):
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))
            if not isinstance(getattr(self, f), tuple):
                raise TypeError(f"MLPLOpt.{f} must be a tuple, got {v!r}.")
        if not self.hidden_sizes or any(
            not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in self.hidden_sizes
        ):
            raise ValueError(
                f"MLPLOpt.hidden_sizes={self.hidden_sizes!r}: expected a non-empty tuple of positive "
                "ints, e.g. (32, 32) or (8,)."
            )
        for f in ("momentum_decays", "adafactor_decays", "loss_decays"):
            if any(not 0.0 <= d < 1.0 for d in getattr(self, f)):
                raise ValueError(f"MLPLOpt.{f}={getattr(self, f)!r}: every decay must be in [0, 1).")
        if not self.momentum_decays or not self.adafactor_decays:
            raise ValueError("MLPLOpt needs at least one momentum decay and one adafactor decay.")
        if not 0.0 <= self.rms_decay < 1.0:
            raise ValueError(f"MLPLOpt.rms_decay={self.rms_decay!r}: expected a value in [0, 1).")
        if any(t <= 0 for t in self.time_scales):
            raise ValueError(f"MLPLOpt.time_scales={self.time_scales!r}: expected positive values.")
        if self.accumulator_dtype not in _DTYPES:
            raise ValueError(
                f"MLPLOpt.accumulator_dtype={self.accumulator_dtype!r}: expected one of {list(_DTYPES)}."
            )
        if self.impl not in _IMPLS:
            raise ValueError(f"MLPLOpt.impl={self.impl!r}: expected one of {_IMPLS}.")
        macs = self.num_features * self.hidden_sizes[0] + sum(
            a * b for a, b in zip(self.hidden_sizes[:-1], self.hidden_sizes[1:])
        )
        limit = {"fused": fused.MAX_UNROLLED_MACS, "native": native_build.MAX_NATIVE_MACS}.get(self.impl)
        if limit is not None and macs > limit:
            raise ValueError(
                f"MLPLOpt(impl={self.impl!r}) unrolls the network elementwise, for small networks only: "
                f"hidden_sizes={self.hidden_sizes} needs {macs} multiply-adds per parameter, over "
                f"the limit {limit}. Use impl='reference' or smaller hidden sizes."
            )
        if not isinstance(self.normalizer_samples, int) or self.normalizer_samples < 0:
            raise ValueError(
                f"MLPLOpt.normalizer_samples={self.normalizer_samples!r}: expected an int >= 0 "
                "(0 = normalize over every element)."
            )
        if not isinstance(self.normalize_adam_features, bool):
            raise TypeError(
                f"MLPLOpt.normalize_adam_features={self.normalize_adam_features!r}: expected True "
                "or False (in YAML: true / false)."
            )
        if self.schedule_decay is not None:
            if isinstance(self.schedule_decay, bool) or not isinstance(self.schedule_decay, (int, float)):
                raise TypeError(
                    f"MLPLOpt.schedule_decay={self.schedule_decay!r}: expected None or the initial decay "
                    "power, a number >= 0 (1.0: linear decay to zero at the end)."
                )
            if not 0 <= self.schedule_decay < math.inf:
                raise ValueError(
                    f"MLPLOpt.schedule_decay={self.schedule_decay!r}: expected a finite power >= 0 "
                    "(1.0: linear decay to zero at the end; None for no decay)."
                )
            if not self.fraction_offsets:
                raise ValueError(
                    f"MLPLOpt(schedule_decay={self.schedule_decay}) decays the learned schedule toward "
                    "the end of training: give it fraction_offsets too, e.g. "
                    "[0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1]."
                )
        if isinstance(self.controller_hidden, bool) or not isinstance(self.controller_hidden, int) or self.controller_hidden < 0:
            raise ValueError(
                f"MLPLOpt.controller_hidden={self.controller_hidden!r}: expected an int >= 0 (0: no "
                "per-tensor controller)."
            )
        if not isinstance(self.controller_linear, bool):
            raise ValueError(f"MLPLOpt.controller_linear={self.controller_linear!r}: expected true or false.")
        if not isinstance(self.controller_decay_terms, bool):
            raise ValueError(f"MLPLOpt.controller_decay_terms={self.controller_decay_terms!r}: expected true or false.")
        if not isinstance(self.controller_depth, bool):
            raise ValueError(f"MLPLOpt.controller_depth={self.controller_depth!r}: expected true or false.")
        if self.controller_depth and not self.controller_linear:
            raise ValueError(
                "MLPLOpt(controller_depth=True) adds an input to the linear per-tensor controller: "
                "set controller_linear=True too."
            )
        if self.controller_decay_terms and not self.controller_linear:
            raise ValueError(
                "MLPLOpt(controller_decay_terms=True) adds inputs to the linear per-tensor controller: "
                "set controller_linear=True too."
            )
        if self.controller_linear and self.controller_hidden:
            raise ValueError(
                f"MLPLOpt(controller_linear=True, controller_hidden={self.controller_hidden}): choose one "
                "per-tensor controller, the linear one (controller_hidden=0) or the MLP one "
                "(controller_linear=False)."
            )
        if self.has_controller and not self.fraction_offsets:
            which = "controller_linear=True" if self.controller_linear else f"controller_hidden={self.controller_hidden}"
            raise ValueError(
                f"MLPLOpt({which}) reads the fraction of training and its length: "
                "give it fraction_offsets too, e.g. [0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1]."
            )
        if not isinstance(self.schedule_hidden, int) or self.schedule_hidden < 1:
            raise ValueError(f"MLPLOpt.schedule_hidden={self.schedule_hidden!r}: expected a positive int.")
        if not isinstance(self.base_fan_in, int) or self.base_fan_in < 1:
            raise ValueError(f"MLPLOpt.base_fan_in={self.base_fan_in!r}: expected a positive int.")

    # ---- sizes -------------------------------------------------------------------------------

    def feature_names(self) -> list[str]:
        """Names of the network inputs, in order: per-tensor features, then global ones."""
        m = [f"m{d}" for d in self.momentum_decays]
        a = [f"{d}" for d in self.adafactor_decays]
        tensor = (
            ["p", "g", "g_clip"]
            + m
            + ["rsqrt_v"]
            + [f"{x}*rsqrt_v" for x in m]
            + [f"g*rsqrt_fac{x}" for x in a]
            + [f"{x}*rsqrt_fac{a[-1]}" for x in m]
            + [f"rsqrt_row{x}" for x in a]
            + [f"rsqrt_col{x}" for x in a]
        )
        glob = [f"time{t:g}" for t in self.time_scales]
        if self.loss_features:
            glob += [f"loss_rel{d}" for d in self.loss_decays]
        return tensor + glob

    @property
    def num_tensor_features(self) -> int:
        n_m, n_a = len(self.momentum_decays), len(self.adafactor_decays)
        return 3 + n_m + 1 + n_m + 3 * n_a + n_m

    @property
    def num_schedule_features(self) -> int:
        """Inputs of the learned schedule (0: no schedule)."""
        if not self.fraction_offsets:
            return 0
        return len(self.fraction_offsets) + (len(self.loss_decays) if self.loss_features else 0)

    @property
    def has_controller(self) -> bool:
        """Whether a per-tensor controller (MLP or linear) adds to each tensor's log step."""
        return bool(self.controller_hidden) or self.controller_linear

    def controller_features(self) -> list[str]:
        """Inputs of the per-tensor controller, in order (empty without one)."""
        if not self.has_controller:
            return []
        fractions = [] if self.controller_linear else [f"frac{x:g}" for x in self.fraction_offsets]
        return (
            fractions
            + ["log_horizon"]
            + [f"log_rms_m{d}*rsqrt_v" for d in self.momentum_decays]
            + ["is_vector"]
            + ([f"log_remaining*log_rms_m{d}*rsqrt_v" for d in self.momentum_decays] if self.controller_decay_terms else [])
            + (["log_num_matrices"] if self.controller_depth else [])
        )

    @property
    def num_global_features(self) -> int:
        return len(self.time_scales) + (len(self.loss_decays) if self.loss_features else 0)

    @property
    def num_features(self) -> int:
        return self.num_tensor_features + self.num_global_features

    def _elementwise_inverse_rms(self, ms_E: jax.Array) -> jax.Array:
        """(E,) the elementwise features' normalizers from their mean squares over the tensor."""
        inv_E = jax.lax.rsqrt(ms_E + feat_lib.NORMALIZE_EPS)
        if self.normalize_adam_features:
            return inv_E
        return inv_E.at[self._first_ratio_feature_index():].set(1.0)

    def _first_ratio_feature_index(self) -> int:
        """Index of the first Adam-like ratio (m * rsqrt_v ...): they follow p, g, g_clip, m, rsqrt_v."""
        return 3 + len(self.momentum_decays) + 1

    def _adam_momentum_index(self) -> int:
        """Which momentum decay plays Adam's beta1: the one closest to 0.9 (the Adam start's)."""
        return min(range(len(self.momentum_decays)), key=lambda i: abs(self.momentum_decays[i] - 0.9))

    def _adam_feature_index(self) -> int:
        """Index of m_beta*rsqrt_v for Adam's beta1 (`_adam_momentum_index`)."""
        return self._first_ratio_feature_index() + self._adam_momentum_index()

    # ---- theta -------------------------------------------------------------------------------

    def init_theta(self, key: jax.Array) -> dict:
        """MLP weights and the linear skip; deterministic in `key`."""
        sizes = (self.num_features, *self.hidden_sizes, 2)
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            std = (self.out_init_scale if last else math.sqrt(2.0)) / math.sqrt(n_in)
            layers.append(
                {
                    "w": std * jax.random.normal(k, (n_in, n_out), jnp.float32),
                    "b": jnp.zeros((n_out,), jnp.float32),
                }
            )
        skip_F = jnp.zeros((self.num_tensor_features,), jnp.float32)
        if self.init_like_adam:
            skip_F = skip_F.at[self._adam_feature_index()].set(-1.0)
        # A learned global log step size: meta-training can rescale every update quickly,
        # which the MLP's magnitude output (exp_mult-damped) and the skip weights cannot.
        theta = {"mlp": layers, "skip": skip_F, "log_step": jnp.zeros((), jnp.float32)}
        if self.num_schedule_features:
            theta["schedule"] = self.init_schedule(keys[-1])
        if self.schedule_decay is not None:
            # The power of a polynomial decay to the end, (remaining fraction)^power.
            theta["schedule_decay"] = jnp.asarray(self.schedule_decay, jnp.float32)
        if self.has_controller:
            theta["controller"] = self.init_controller(keys[-1])
        return theta

    def init_controller(self, key: jax.Array) -> dict:
        """The per-tensor controller's weights; its output layer starts at 0 (no change)."""
        if self.controller_linear:
            n_in = len(self.controller_features())
            return {"w_out": jnp.zeros((n_in,), jnp.float32), "b_out": jnp.zeros((), jnp.float32)}
        return _init_log_step_head(jax.random.fold_in(key, 0xC7A1), len(self.controller_features()), self.controller_hidden)

    def init_schedule(self, key: jax.Array) -> dict:
        """The schedule MLP's weights; its output layer starts at 0 (no change to log_step)."""
        return _init_log_step_head(jax.random.fold_in(key, 0x5CED), self.num_schedule_features, self.schedule_hidden)

    # ---- state -------------------------------------------------------------------------------

    def init_state(self, params: Any) -> MLPLOptState:
        dtype = _DTYPES[self.accumulator_dtype]

        def leaf(p):
            rows, cols = matrix_shape(tuple(jnp.shape(p)))
            return acc_lib.init_leaf(rows, cols, len(self.momentum_decays), len(self.adafactor_decays), dtype)

        n_loss = len(self.loss_decays) if self.loss_features else 0
        return MLPLOptState(
            count=jnp.zeros([], jnp.int32),
            accumulators=jax.tree.map(leaf, params),
            loss_ema_L=jnp.zeros((n_loss,), jnp.float32),
        )

    # ---- update ------------------------------------------------------------------------------

    def update(self, theta, grads, state: MLPLOptState, params, *, loss=None, roles=None, num_steps=None):
        """(updates, new_state) for one step; see the module docstring.

        num_steps: the length of training, read by the schedule (`fraction_offsets`); ignored
        without one.
        """
        if params is None:
            raise ValueError(
                "MLPLOpt.update needs params (the parameter value is an input feature): call "
                "tx.update(grads, state, params)."
            )
        loss_ema_L, glob_G, loss_rel = self._global_features(state, loss)
        log_step = theta["log_step"] + self._schedule(theta, state.count, num_steps, loss_rel)
        ctrl_glob = self._controller_globals(state.count, num_steps, grads)
        # The global features add the same vector to every parameter's first hidden layer.
        first = theta["mlp"][0]
        n_t = self.num_tensor_features
        first_bias_H = first["b"] + glob_G @ first["w"][n_t:]

        leaves_g, treedef = jax.tree.flatten(grads)
        leaves_p = treedef.flatten_up_to(params)
        # By field name: containers such as flax nnx.Optimizer hand the state back with our
        # NamedTuples turned into their own mappings (attribute access works, `_replace` does not).
        leaves_acc = [acc_lib.as_leaf_accumulators(a) for a in treedef.flatten_up_to(state.accumulators)]
        leaf_roles = mup.resolve_roles(params, roles)
        new_acc, updates = [], []
        for g, p, acc, role in zip(leaves_g, leaves_p, leaves_acc, leaf_roles):
            u, a, _ = self._update_leaf(theta, first_bias_H, log_step, ctrl_glob, g, p, acc, role)
            updates.append(u)
            new_acc.append(a)
        new_state = MLPLOptState(
            count=state.count + 1,
            accumulators=treedef.unflatten(new_acc),
            loss_ema_L=loss_ema_L,
        )
        return treedef.unflatten(updates), new_state

    def _global_features(self, state: MLPLOptState, loss):
        glob = [feat_lib.time_features(state.count, self.time_scales)]
        loss_ema_L = state.loss_ema_L
        loss_rel = None
        if self.loss_features:
            if loss is None:
                raise ValueError(
                    "MLPLOpt(loss_features=True) needs the loss: call update(..., loss=loss), e.g. "
                    "tx.update(grads, state, params, loss=loss_value)."
                )
            loss = jnp.asarray(loss, jnp.float32)
            # The first step has no history: start the averages at the current loss.
            prev_L = jnp.where(state.count == 0, loss, loss_ema_L)
            decays_L = jnp.asarray(self.loss_decays, jnp.float32)
            loss_rel = feat_lib.loss_features(loss, prev_L)
            glob.append(loss_rel)
            loss_ema_L = decays_L * prev_L + (1 - decays_L) * loss
        return loss_ema_L, jnp.concatenate(glob), loss_rel

    def _schedule(self, theta, count, num_steps, loss_rel):
        """The learned schedule's log step multiplier at this step (0 without a schedule)."""
        if not self.fraction_offsets:
            return jnp.zeros((), jnp.float32)
        if num_steps is None:
            raise ValueError(
                f"MLPLOpt(fraction_offsets={self.fraction_offsets}) follows a learned schedule over "
                "the length of training and needs it: learned_opt.load(name, num_steps=N) or "
                "to_optax(arch, theta, num_steps=N), with N the number of training steps."
            )
        feats = [feat_lib.fraction_features(count, num_steps, self.fraction_offsets)]
        if loss_rel is not None:
            feats.append(loss_rel)
        log_mult = _log_step_head(theta["schedule"], jnp.concatenate(feats))
        if self.schedule_decay is not None:
            log_mult = log_mult + feat_lib.log_decay_to_end(theta["schedule_decay"], count, num_steps)
        return log_mult

    def _controller_globals(self, count, num_steps, grads):
        """The controller's inputs shared by every tensor: fraction features (not for the linear
        one) and log T (None without a controller). log T is centred on 600 steps, halved: O(1)
        for 100-4000 steps. The linear one's are [log T, log remaining fraction (decay terms),
        log(M / 3) (depth)], the optional ones present or not."""
        if not self.has_controller:
            return None
        log_horizon = feat_lib.log_horizon(num_steps)
        if self.controller_linear:
            glob = [log_horizon]
            if self.controller_decay_terms:
                glob.append(feat_lib.log_remaining_fraction(count, num_steps))
            if self.controller_depth:
                glob.append(jnp.asarray(feat_lib.log_num_matrices(grads), jnp.float32))
            return jnp.stack(glob)
        frac_X = feat_lib.fraction_features(count, num_steps, self.fraction_offsets)
        return jnp.concatenate([frac_X, log_horizon[None]])

    def _tensor_log_step(self, theta, ctrl_glob, ms_E, shape):
        """The controller's term of one tensor's log step (0 without a controller).

        ms_E holds the mean squares of the elementwise features, among them m_k / sqrt(v) for
        each momentum decay (computed for the normalizers anyway: no extra pass over the tensor).
        """
        if ctrl_glob is None:
            return 0.0
        first, n_m = self._first_ratio_feature_index(), len(self.momentum_decays)
        log_rms_M = 0.5 * jnp.log(ms_E[first : first + n_m] + 1e-12)
        is_vector = jnp.full((1,), 1.0 if len(shape) <= 1 else 0.0, jnp.float32)
        if self.controller_linear:  # ctrl_glob: [log T, log remaining fraction?, log(M / 3)?]
            x = [ctrl_glob[:1], log_rms_M, is_vector]
            if self.controller_decay_terms:
                x.append(ctrl_glob[1] * log_rms_M)
            if self.controller_depth:
                x.append(ctrl_glob[-1:])
            return _log_step_head(theta["controller"], jnp.concatenate(x))
        return _log_step_head(theta["controller"], jnp.concatenate([ctrl_glob, log_rms_M, is_vector]))

    def _update_leaf(self, theta, first_bias_H, log_step, ctrl_glob, g, p, acc, role):
        """(update, new accumulators, (E,) mean squares of the elementwise features) of one tensor.

        The mean squares (the normalizers' statistics, in `feature_names()` order) come back so a
        per-tensor controller can read them on the next step without another pass over the tensor.
        """
        if self.impl == "native" and p.dtype in (jnp.float32, jnp.bfloat16) and g.dtype in (jnp.float32, jnp.bfloat16):
            return mlp_native_step.update_leaf(self, theta, first_bias_H, log_step, ctrl_glob, g, p, acc, role)
        shape = tuple(jnp.shape(p))
        rows, cols = matrix_shape(shape)
        g_RxC = jnp.clip(g.astype(jnp.float32), -feat_lib.GRAD_CLIP, feat_lib.GRAD_CLIP).reshape(rows, cols)
        p_RxC = p.astype(jnp.float32).reshape(rows, cols)
        acc = acc_lib.update_leaf(
            acc,
            g_RxC,
            jnp.asarray(self.momentum_decays, jnp.float32),
            self.rms_decay,
            jnp.asarray(self.adafactor_decays, jnp.float32),
        )
        row_mean_Ax1 = jnp.mean(acc.row_AxR.astype(jnp.float32), axis=1, keepdims=True)
        col_mean_Ax1 = jnp.mean(acc.col_AxC.astype(jnp.float32), axis=1, keepdims=True)
        mean_squares = fused.mean_squares if self.impl == "fused" else norm_lib.stacked_mean_squares

        def statistics(p_RxC, g_RxC, acc):
            """(mean second moment, (E,) mean squares of the elementwise features) over the inputs."""
            rms_mean = jnp.mean(acc.rms_RxC.astype(jnp.float32))
            scales = feat_lib.FeatureScales(row_mean_Ax1, col_mean_Ax1, rms_mean)
            return rms_mean, mean_squares(self._tensor_features(p_RxC, g_RxC, acc, scales).elementwise)

        sr, sc = norm_lib.normalizer_strides(rows, cols, self.normalizer_samples)
        rms_mean, ms_E = norm_lib.grid_or_exact(statistics, (p_RxC, g_RxC, acc), sr, sc)
        scales = feat_lib.FeatureScales(row_mean_Ax1, col_mean_Ax1, rms_mean)
        feats = self._tensor_features(p_RxC, g_RxC, acc, scales)
        inv_T = jnp.concatenate(
            [
                self._elementwise_inverse_rms(ms_E),
                norm_lib.inverse_rms(feats.rows_KxR.T),
                norm_lib.inverse_rms(feats.cols_KxC.T),
            ]
        )
        if self.impl == "fused":
            direction, log_mag = fused.network(theta, first_bias_H, feats, inv_T)
        else:
            feat_NxF = jnp.stack(feats.broadcast(), axis=-1).reshape(-1, self.num_tensor_features)
            direction, log_mag = self._mlp(theta, first_bias_H, feat_NxF * inv_T)
        scale = mup.update_scale(shape, role, self.base_fan_in) if self.mup else 1.0
        log_step = log_step + self._tensor_log_step(theta, ctrl_glob, ms_E, shape)
        step = direction * jnp.exp(self.exp_mult * log_mag + log_step) * (self.step_mult * scale)
        return step.reshape(shape).astype(p.dtype), acc, ms_E

    def _tensor_features(
        self, p_RxC, g_RxC, acc: acc_lib.LeafAccumulators, scales: feat_lib.FeatureScales
    ) -> feat_lib.TensorFeatures:
        """The per-tensor features in `feature_names()` order, split by how they vary."""
        eps = feat_lib.RSQRT_EPS
        m = [mk.astype(jnp.float32) for mk in acc.momentum_MxRxC]
        rsqrt_v = jax.lax.rsqrt(acc.rms_RxC.astype(jnp.float32) + eps)
        row_AxR, col_AxC = acc.row_AxR.astype(jnp.float32), acc.col_AxC.astype(jnp.float32)
        rsqrt_row_AxR = jax.lax.rsqrt(row_AxR + eps)
        rsqrt_col_AxC = jax.lax.rsqrt(col_AxC + eps)
        # Adafactor's rsqrt(v) = rsqrt(row) rsqrt(col) sqrt(mean(row)): per row / per column
        # factors, so per element it costs a multiply instead of a divide and an rsqrt.
        scaled_row_AxR = rsqrt_row_AxR * jnp.sqrt(scales.row_mean_Ax1 + eps)
        rsqrt_fac = [r[:, None] * c[None, :] for r, c in zip(scaled_row_AxR, rsqrt_col_AxC)]
        cap = feat_lib.capped_rsqrt
        elementwise = (
            [p_RxC, g_RxC, jnp.clip(g_RxC, -0.1, 0.1)]
            + m
            + [cap(rsqrt_v, scales.rms_mean)]
            + [feat_lib.clip_ratio(mk * rsqrt_v) for mk in m]
            + [feat_lib.clip_ratio(g_RxC * r) for r in rsqrt_fac]
            + [feat_lib.clip_ratio(mk * rsqrt_fac[-1]) for mk in m]
        )
        return feat_lib.TensorFeatures(
            elementwise, cap(rsqrt_row_AxR, scales.row_mean_Ax1), cap(rsqrt_col_AxC, scales.col_mean_Ax1)
        )

    def _mlp(self, theta, first_bias_H, feat_NxF):
        layers = theta["mlp"]
        n_t = self.num_tensor_features
        h = jax.nn.relu(feat_NxF @ layers[0]["w"][:n_t] + first_bias_H)
        for layer in layers[1:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        out_Nx2 = h @ layers[-1]["w"] + layers[-1]["b"]
        direction_N = out_Nx2[:, 0] + feat_NxF @ theta["skip"]
        return direction_N, out_Nx2[:, 1]


def _init_log_step_head(key: jax.Array, n_in: int, hidden: int) -> dict:
    """A one-hidden-layer tanh MLP giving a log step term (the schedule, the controller); its
    output layer starts at 0, so it changes nothing until meta-trained."""
    return {
        "w": jax.random.normal(key, (n_in, hidden), jnp.float32) / math.sqrt(n_in),
        "b": jnp.zeros((hidden,), jnp.float32),
        "w_out": jnp.zeros((hidden,), jnp.float32),
        "b_out": jnp.zeros((), jnp.float32),
    }


def _log_step_head(head: dict, x_I: jax.Array) -> jax.Array:
    """The log step term of `_init_log_step_head`'s MLP at inputs x_I (linear in x_I for a
    head without a hidden layer: the linear controller)."""
    if "w" not in head:
        return x_I @ head["w_out"] + head["b_out"]
    return jnp.tanh(x_I @ head["w"] + head["b"]) @ head["w_out"] + head["b_out"]
