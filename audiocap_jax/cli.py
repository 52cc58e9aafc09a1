"""The exit codes every command (`train`, `predict`, `evaluate`, `prepare`, the TFDS build) uses.

One table so scripts and job schedulers can tell the outcomes apart (documented in the README).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug or an unexpected failure: the traceback is kept
EXIT_USER = 2  # a user error (bad flag, config key or value, missing or unreadable input): one message, no traceback
EXIT_PARTIAL = 3  # finished, but some inputs were skipped (counted and named in the output)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM with a checkpoint saved; rerun the same command to resume
