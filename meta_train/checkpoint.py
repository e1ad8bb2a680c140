"""Orbax checkpoints of a whole meta-training run: theta, outer state, unroll states, rng, step.

The tree is stored as a flat {key path: array} dict of its non-empty leaves (orbax cannot
write zero-size arrays, which optimizer states legitimately hold); restoring fills a template
(`jax.eval_shape`-able tree of a freshly built run): the stored paths, shapes and dtypes (orbax's
own metadata) are compared with the template's before any array is read, and the empty leaves
come from the template. Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-write leaves the previous checkpoint intact (atomic); a checkpoint
damaged afterwards (a file truncated or deleted) raises `CheckpointDamagedError`, so the caller
can fall back to an older one.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

Spec = tuple[tuple[int, ...], str]  # (shape, dtype name) of one stored array


class CheckpointDamagedError(ValueError):
    """A checkpoint whose files are missing, truncated or unreadable, or whose values are impossible."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays differ from this run's: a changed recipe, not damage."""


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def flatten(tree: Any) -> dict[str, Any]:
    """{"learner/theta/log_lr": leaf, ...}: the names checkpoints and their errors use."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_key(p): x for p, x in leaves}


def _flat_nonempty(tree: Any) -> dict[str, Any]:
    return {k: x for k, x in flatten(tree).items() if np.size(x) > 0}


def _spec(x: Any) -> Spec:
    return tuple(int(d) for d in np.shape(x)), str(x.dtype)


def _describe(spec: Spec | None) -> str:
    return "absent" if spec is None else f"{spec[1]}{list(spec[0])}"


def first_mismatch(stored: dict[str, Spec], expected: dict[str, Spec]) -> str | None:
    """The first path (in the template's order) that differs in shape or dtype or that only one
    side has, with both specs; None when the two agree."""
    order = list(expected) + [k for k in stored if k not in expected]
    diffs = [k for k in order if stored.get(k) != expected.get(k)]
    if not diffs:
        return None
    k = diffs[0]
    more = f" (and {len(diffs) - 1} more differences)" if len(diffs) > 1 else ""
    return (f"'{k}' is {_describe(stored.get(k))} there, this run expects "
            f"{_describe(expected.get(k))}{more}")


def _first_line(err: Exception, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
            # Named, so item_metadata() can read a step back (without it orbax returns None).
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, tree: Any) -> None:
        if self._manager.latest_step() == step:
            return  # already saved (e.g. the periodic save coincides with the final one)
        self._manager.save(step, args=ocp.args.StandardSave(_flat_nonempty(tree)))
        self._manager.wait_until_finished()

    def stored_specs(self, step: int) -> dict[str, Spec]:
        """Path -> (shape, dtype) of every array stored at `step`, from orbax's metadata alone."""
        try:
            meta = self._manager.item_metadata(step)
        except Exception as err:  # orbax raises ValueError, JSONDecodeError, OSError, ...
            raise CheckpointDamagedError(
                f"checkpoint {self.step_dir(step)}: its metadata is unreadable ({_first_line(err)})"
            ) from None
        if meta is None:
            raise CheckpointDamagedError(f"checkpoint {self.step_dir(step)}: its metadata is missing")
        return {k: (tuple(int(d) for d in m.shape), str(m.dtype)) for k, m in meta.items()}

    def restore(self, step: int, template: Any) -> Any:
        """The checkpoint at `step`, as a tree shaped like `template`.

        Raises CheckpointMismatchError naming the first differing path (a changed recipe) and
        CheckpointDamagedError when the files cannot be read back (try an older step).
        """
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        wanted = _flat_nonempty(template)
        problem = first_mismatch(self.stored_specs(step), {k: _spec(x) for k, x in wanted.items()})
        if problem is not None:
            raise CheckpointMismatchError(
                f"checkpoint {self.step_dir(step)} does not fit this run: {problem}. Likely "
                "estimator.num_workers / distributed.num_workers or the optimizer architecture "
                "changed since it was written; resume with the recipe it was written with (the "
                "workdir's config.yaml), or start a fresh --workdir."
            )
        abstract = {k: jax.ShapeDtypeStruct(np.shape(x), x.dtype) for k, x in wanted.items()}
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # tensorstore reports truncated/missing files as ValueError
            raise CheckpointDamagedError(
                f"checkpoint {self.step_dir(step)}: its arrays cannot be read ({_first_line(err)})"
            ) from None
        values = [restored[_key(p)] if np.size(x) > 0 else x for p, x in leaves]
        return jax.tree_util.tree_unflatten(treedef, values)

    def restore_part(self, step: int, prefix: str, template: Any) -> Any:
        """Only the subtree stored under `prefix` (e.g. "learner/theta"), shaped like `template`.

        Reads just those arrays, so exporting theta from a large run does not load every
        worker's unroll states, and needs no run to be built.
        """
        want = {f"{prefix}/{k}": x for k, x in _flat_nonempty(template).items()}
        stored = self.stored_specs(step)
        missing = sorted(set(want) - set(stored))
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint {self.step_dir(step)} has no {missing[:3]}: it was written by a "
                "different architecture than its workdir's config.yaml names."
            )
        for k, x in want.items():
            if stored[k][0] != np.shape(x):
                raise CheckpointMismatchError(
                    f"checkpoint {self.step_dir(step)}: '{k}' has shape {list(stored[k][0])}, the "
                    f"workdir's architecture expects {list(np.shape(x))}."
                )
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                os.path.join(self.step_dir(step), "default"),
                args=ocp.args.PyTreeRestore(
                    {k: np.asarray(x) for k, x in want.items()},
                    restore_args={k: ocp.ArrayRestoreArgs(restore_type=np.ndarray) for k in want},
                    partial_restore=True,
                ),
            )
        except Exception as err:
            raise CheckpointDamagedError(
                f"checkpoint {self.step_dir(step)}: its arrays cannot be read ({_first_line(err)})"
            ) from None
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        values = [restored[f"{prefix}/{_key(p)}"] if np.size(x) > 0 else x for p, x in leaves]
        return jax.tree_util.tree_unflatten(treedef, values)

    def set_aside(self, step: int) -> str:
        """Moves checkpoint `step` out of the run (to <directory>.damaged/<step>, kept for
        inspection) so a resumed run can write that step again; returns where it went."""
        root = self.directory + ".damaged"
        os.makedirs(root, exist_ok=True)
        dest, n = os.path.join(root, str(step)), 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(root, f"{step}-{n}")
        shutil.move(self.step_dir(step), dest)
        self._manager.reload()
        return dest

    def close(self) -> None:
        self._manager.close()
