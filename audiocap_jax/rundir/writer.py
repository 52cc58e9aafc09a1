"""What a run writes: one metrics writer (JSONL files in the workdir, always; wandb when enabled; process 0
only). What it logs is kept to our own records by `cli.run` (`cli.quiet_library_logs`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from absl import logging

from audiocap_jax.rundir.layout import METRICS_FILE, SAMPLES_FILE

WANDB_MODES = ("online", "offline", "disabled")  # config.log.wandb_mode; the WANDB_MODE variable overrides it


class MetricWriter:
    def __init__(
        self, workdir: str | Path, *, wandb_settings: Mapping[str, Any] | None = None, config: Any = None
    ):
        self.active = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._wandb = None
        if not self.active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = dict(wandb_settings or {})
        mode = os.environ.get("WANDB_MODE", settings.get("mode", "disabled"))
        if mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=settings.get("project") or "audiocap-jax",
                group=settings.get("group") or None,
                name=settings.get("name") or None,
                tags=list(settings.get("tags") or ()),
                mode=mode,
                dir=str(self.workdir),
                config=config,
                resume="allow",
            )

    def truncate_after(self, step: int) -> None:
        """Forget records logged after `step` (a resumed run logs those steps again)."""
        if not self.active:
            return
        for name in (METRICS_FILE, SAMPLES_FILE):
            path = self.workdir / name
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
                path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with (self.workdir / METRICS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=int(step))

    def write_samples(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """A table of sample predictions next to their references."""
        if not self.active:
            return
        with (self.workdir / SAMPLES_FILE).open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": int(step), "table": name, **row}, ensure_ascii=False) + "\n")
        if self._wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[str(r[c]) for c in columns] for r in rows])
            self._wandb.log({f"{name}/samples": table}, step=int(step))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        logging.flush()


def read_metrics(workdir: str | Path) -> list[dict[str, float]]:
    path = Path(workdir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
