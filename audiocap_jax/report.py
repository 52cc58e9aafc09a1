"""`python -m audiocap_jax.report WORKDIR`: writes WORKDIR/metrics.png and prints the run's summary.

It reads only the workdir (rundir/summary.py does the work), so it also works on a run that finished earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from audiocap_jax import cli
from audiocap_jax.rundir import layout, summary
from audiocap_jax.rundir.writer import read_metrics


def main(argv: Sequence[str]) -> None:
    """`python -m audiocap_jax.report WORKDIR`: writes WORKDIR/metrics.png and prints the summary."""
    if len(argv) != 2:
        raise cli.UserError(
            f"expected one WORKDIR; got {list(argv[1:]) or 'none'}.",
            "run python -m audiocap_jax.report WORKDIR, with the --workdir of a training run",
        )
    workdir = Path(argv[1]).expanduser()
    if not read_metrics(workdir):  # before plotting, so nothing is written into a folder that is no workdir
        raise cli.UserError(
            f"{workdir} holds no training log ({layout.METRICS_FILE} is missing or empty).",
            "pass the --workdir of a training run that logged at least one step",
        )
    summary.plot_metrics(workdir)
    print(summary.describe(workdir))


if __name__ == "__main__":
    cli.run(main)
