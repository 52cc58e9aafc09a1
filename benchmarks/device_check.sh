#!/usr/bin/env bash
# The one prepared command for a GPU/TPU machine: the accelerator table, kept as a file.
#
#   benchmarks/device_check.sh [benchmark flags]     # e.g. --skip-torch, --variants small
#
# Runs `python -m benchmarks.accelerator` (about 5 minutes on one H100/H200, see its docstring) under a
# 9-minute timeout, so that a hung compile still ends the run within 10 minutes with the partial table
# written. The table (stdout) goes to $OUT/accelerator.txt (./accelerator.txt where OUT is unset), the log
# (stderr) to $OUT/accelerator_log.txt; its last lines are printed at the end. PYTHON picks the interpreter
# (default python3, which must hold jax, flax, optax, transformers and, for the PyTorch rows, torch).
set -uo pipefail
out="$(realpath -m "${OUT:-.}")"
cd "$(dirname "$0")/.." || exit 1  # the repository root: `python -m benchmarks.accelerator` runs from there
mkdir -p "$out"
{
    date -u '+%Y-%m-%d %H:%M UTC'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} | tee "$out/accelerator.txt"
PYTHONUNBUFFERED=1 timeout --kill-after=15 540 "${PYTHON:-python3}" -m benchmarks.accelerator "$@" \
    2>"$out/accelerator_log.txt" | tee -a "$out/accelerator.txt"
status=$?
echo "--- last lines of $out/accelerator_log.txt (exit status $status) ---"
tail -n 15 "$out/accelerator_log.txt"
exit "$status"
