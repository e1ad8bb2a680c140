"""Orbax checkpoints of a whole meta-training run: theta, outer state, unroll states, rng, step.

The tree is stored as a flat {key path: array} dict of its non-empty leaves (orbax cannot
write zero-size arrays, which optimizer states legitimately hold); restoring fills a template
(`jax.eval_shape`-able tree of a freshly built run), so structure, shapes and dtypes are
validated and the empty leaves come from the template. Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-write leaves the previous checkpoint intact (atomic).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _flat_nonempty(tree: Any) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_key(p): x for p, x in leaves if np.size(x) > 0}


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, tree: Any) -> None:
        if self._manager.latest_step() == step:
            return  # already saved (e.g. the periodic save coincides with the final one)
        self._manager.save(step, args=ocp.args.StandardSave(_flat_nonempty(tree)))
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> Any:
        """The checkpoint at `step`, as a tree shaped like `template`; mismatches name the path."""
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        abstract = {
            k: jax.ShapeDtypeStruct(np.shape(x), x.dtype)
            for k, x in _flat_nonempty(template).items()
        }
        stored = self._manager.item_metadata(step)
        stored_keys = set(stored.keys()) if stored is not None else set(abstract)
        if stored_keys != set(abstract):
            missing = sorted(set(abstract) - stored_keys)[:3]
            extra = sorted(stored_keys - set(abstract))[:3]
            raise ValueError(
                f"checkpoint {self.directory}/{step} does not match this run's structure "
                f"(missing {missing}, unexpected {extra}); it was written by a different recipe. "
                "Use the recipe it was written with, or a fresh --workdir."
            )
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        for k, want in abstract.items():
            got = restored[k]
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ValueError(
                    f"checkpoint {self.directory}/{step}: '{k}' has {got.dtype}{list(got.shape)}, "
                    f"this run expects {want.dtype}{list(want.shape)}."
                )
        values = [restored[_key(p)] if np.size(x) > 0 else x for p, x in leaves]
        return jax.tree_util.tree_unflatten(treedef, values)

    def restore_part(self, step: int, prefix: str, template: Any) -> Any:
        """Only the subtree stored under `prefix` (e.g. "learner/theta"), shaped like `template`.

        Reads just those arrays, so exporting theta from a large run does not load every
        worker's unroll states, and needs no run to be built.
        """
        want = {f"{prefix}/{k}": x for k, x in _flat_nonempty(template).items()}
        stored = self._manager.item_metadata(step)
        missing = sorted(set(want) - set(stored.keys())) if stored is not None else []
        if missing:
            raise ValueError(
                f"checkpoint {self.directory}/{step} has no {missing[:3]}: it was written by a "
                "different architecture than its workdir's config.yaml names."
            )
        reader = ocp.PyTreeCheckpointer()
        restored = reader.restore(
            os.path.join(self.directory, str(step), "default"),
            args=ocp.args.PyTreeRestore(
                {k: np.asarray(x) for k, x in want.items()},
                restore_args={k: ocp.ArrayRestoreArgs(restore_type=np.ndarray) for k in want},
                partial_restore=True,
            ),
        )
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        values = []
        for p, x in leaves:
            if np.size(x) == 0:
                values.append(x)
                continue
            got = restored[f"{prefix}/{_key(p)}"]
            if got.shape != np.shape(x):
                raise ValueError(
                    f"checkpoint {self.directory}/{step}: '{prefix}/{_key(p)}' has shape "
                    f"{list(got.shape)}, the workdir's architecture expects {list(np.shape(x))}."
                )
            values.append(got)
        return jax.tree_util.tree_unflatten(treedef, values)

    def close(self) -> None:
        self._manager.close()
