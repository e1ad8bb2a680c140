"""Metrics sinks for the driver: JSONL (one object per logged step) and TensorBoard.

Estimator and learner steps *return* flat `/`-separated dicts of device scalars; only this
module, on the host, turns them into floats and writes them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np


def to_host(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


class MetricsWriter:
    def __init__(self, workdir: str, *, truncate_from_step: int = 0, tensorboard: bool = True):
        """truncate_from_step: on resume, rows logged after the restored checkpoint are dropped
        (the resumed run recomputes them), so the file never holds a step twice."""
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(self.path):
            kept = [r for r in read_jsonl(self.path) if r["step"] <= truncate_from_step]
            with open(self.path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The rows of a metrics file. A torn last line (a run killed mid-write) is dropped; a bad
    line before the last is corruption and names the file and line."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON ({line[:60]!r}...); the file is corrupt.") from None
    return rows
