"""Orbax checkpoints of a training run: step + model weights + optimizer (one pytree) and the data iterator state.

Keeps the last K checkpoints plus the best N by a validation score. Saves are asynchronous. A checkpoint that
was interrupted mid-save is never listed (Orbax finalises a step directory atomically); one that is listed but
fails to restore (corrupted, partial or unreadable files) is moved aside to `<step>.corrupt-<UTC time>` (kept
for inspection, never deleted; Orbax ignores the name), named in a warning, and the previous one is used, so
training passes that step again and saves it anew instead of failing with StepAlreadyExistsError.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

BEST_KEY = "best_score"  # the metric Orbax ranks checkpoints by (higher is better)


def finished_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of the finished checkpoints in `directory`, from the folder names alone, without opening Orbax
    (cheap enough for pre-flight checks): an unfinished save has a temporary name, and a moved-aside corrupt
    one is `<step>.corrupt-<time>`."""
    return sorted(
        int(p.name) for p in Path(directory).expanduser().glob("*") if p.name.isdigit() and p.is_dir()
    )


class Checkpointer:
    """Thin policy layer over `ocp.CheckpointManager` with items `state` (pytree) and `data` (JSON)."""

    def __init__(
        self, directory: str | Path, *, keep_last: int = 2, keep_best: int = 1, async_save: bool = True
    ):
        self.directory = Path(directory).absolute()
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep_last),
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_KEY],
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, state: Any, data_state: dict[str, Any], best_score: float | None = None
    ) -> None:
        """Start an (async) save; `best_score` (higher is better) makes the step a candidate for best-N."""
        metrics = None if best_score is None or math.isnan(best_score) else {BEST_KEY: float(best_score)}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            metrics=metrics,
            force=True,
        )

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data_state) of the newest checkpoint that restores; None when there is none."""
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                aside = self.move_aside(step)
                logging.warning(
                    "Checkpoint step %d in %s cannot be restored (%s: %s); moved it aside to %s and falling "
                    "back to the previous one (training redoes the steps after it).",
                    step,
                    self.directory,
                    type(e).__name__,
                    (str(e).splitlines() or [""])[0][:300],
                    aside,
                )
                continue
            return step, restored["state"], dict(restored["data"])
        return None

    def move_aside(self, step: int) -> Path:
        """Renames step directory `step` to `<step>.corrupt-<UTC time>` (process 0; every process waits)."""
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            os.rename(self.directory / str(step), self.directory / f"{step}.corrupt-{stamp}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self._manager.reload()
        return max(self.directory.glob(f"{step}.corrupt-*"))  # the newest, should a step be corrupt again

    def restore_subset(self, step: int, abstract_subset: dict[str, Any]) -> dict[str, Any]:
        """Only some top-level fields of a saved state (e.g. params and frozen for inference, no optimizer)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract_subset,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subset),
                    partial_restore=True,
                )
            ),
        )
        return dict(restored["state"])

    def saved_dtypes(self, step: int, field: str) -> list[Any]:
        """The dtypes of the arrays under one top-level field of the saved state (from metadata only)."""
        metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        return [leaf.dtype for leaf in jax.tree.leaves(metadata[field])]

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
