"""The JVM tools the metrics run: the Java check, one JVM command, failure isolation, the PTB tokenizer and
pycocoevalcap's METEOR process.

pycocoevalcap's Meteor always starts `java` from PATH, so every JVM tool here uses that same Java, checked
first (`java_problem`) so that a missing Java is one clear line, not a traceback from inside pycocoevalcap.
A batch tool that fails on some texts (a degenerate caption can exhaust the heap) is rerun on halves until
the texts at fault are found (`isolate_failures`), so the other clips are still scored.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from absl import logging
from pycocoevalcap.meteor import meteor as pycoco_meteor
from pycocoevalcap.tokenizer import ptbtokenizer

JAVA_FIX = "apt-get install -y openjdk-17-jdk-headless"
MIN_JAVA = 8
JAVA = "java"
_PTB_JAR = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
# pycocoevalcap's Meteor() command and working directory, unchanged (its jar finds its data from there).
_METEOR_COMMAND = (JAVA, "-jar", "-Xmx2G", pycoco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm")
_METEOR_DIR = Path(pycoco_meteor.__file__).parent
# When a batch JVM tool (PTB tokenizer, SPICE) fails, its batch is halved until the texts at fault are found
# (one bad text among 4096 takes 2 x 12 runs); past this many runs the failure is reported as the whole batch's.
_MAX_ISOLATION_RUNS = 24


class JavaError(RuntimeError):
    """A JVM tool (PTB tokenizer, METEOR, SPICE) failed; the message holds the command and the end of its
    stderr, `cause` the tool's own one-line reason (e.g. "java.lang.OutOfMemoryError: Java heap space")."""

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(message)
        self.cause = cause or message.splitlines()[0]

    @classmethod
    def from_stderr(cls, what: str, returncode: int | None, stderr: str, command: Sequence[str]) -> JavaError:
        """The error of a JVM that exited with `returncode`: the first exception line of its stderr is the cause."""
        stderr = stderr.strip()
        lines = stderr.splitlines() or ["(no stderr)"]
        cause = next((line for line in lines if "Exception" in line or "Error" in line), lines[-1]).strip()
        cause = re.sub(r'^Exception in thread "[^"]*" ', "", cause)
        return cls(
            f"{what} failed (exit {returncode}): {cause}\ncommand: {' '.join(command)}\n{stderr[-3000:]}",
            cause,
        )


def java_problem(what: str) -> str | None:
    """None when `java` runs and is new enough; otherwise why not, ending with the command that installs one.

    Checked before every JVM tool (PTB tokenizer, METEOR, SPICE) so a missing Java is one clear line, not a
    traceback from inside pycocoevalcap.
    """
    major = java_major()
    if major is None:
        return f"{what} needs Java >= {MIN_JAVA}, but no working {JAVA!r} is on PATH; fix: {JAVA_FIX}"
    if major < MIN_JAVA:
        return f"{what} needs Java >= {MIN_JAVA}, but {JAVA!r} is Java {major}; fix: {JAVA_FIX}"
    return None


def run_java(args: Sequence[str], *, what: str) -> str:
    """Runs one JVM command and returns its stdout (UTF-8), raising JavaError with stderr on failure."""
    problem = java_problem(what)
    if problem is not None:
        raise FileNotFoundError(problem)
    command = [JAVA, *args]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", errors="replace")
        raise JavaError.from_stderr(what, result.returncode, stderr, command)
    return result.stdout.decode("utf-8")


T = TypeVar("T")


def isolate_failures(
    run: Callable[[list[int]], Sequence[T]], count: int, what: str
) -> tuple[dict[int, T], dict[int, str]]:
    """`run` (a batch JVM tool over items 0..count-1, one result per item) on everything, and when it fails,
    on halves, down to the single items at fault: (results of the items that ran, item -> the tool's cause).

    A failure is one item's fault only if some other part of the batch ran; when nothing runs, or the batch
    is not narrowed down within `_MAX_ISOLATION_RUNS` runs, the tool's JavaError is raised as it is.
    """
    results: dict[int, T] = {}
    failures: dict[int, str] = {}
    runs = 0

    def attempt(items: list[int]) -> None:
        nonlocal runs
        runs += 1
        try:
            results.update(zip(items, run(items), strict=True))
        except JavaError as error:
            if len(items) == 1:
                failures[items[0]] = error.cause
                return
            if runs >= _MAX_ISOLATION_RUNS:
                raise
            if runs == 1:
                logging.warning("metrics: %s failed (%s); looking for the texts at fault", what, error.cause)
            middle = len(items) // 2
            attempt(items[:middle])
            attempt(items[middle:])

    attempt(list(range(count)))
    if failures and not results:
        raise JavaError(f"{what} failed on every text: {next(iter(failures.values()))}")
    return results, failures


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenises like pycocoevalcap's PTBTokenizer: its jar, flags and punctuation list, so identical output.

    Differences that cannot change a score: all captions go through one JVM, the temp file lives in our own
    temp dir, and every run of whitespace (including line/paragraph separators, which would shift the
    one-caption-per-line output against its clips) becomes one space before tokenising.
    """
    if not captions:
        return []
    lines = [" ".join(caption.split()) for caption in captions]
    with tempfile.TemporaryDirectory(prefix="audiocap_ptb_") as tmp:
        text_file = Path(tmp) / "captions.txt"
        text_file.write_bytes("\n".join(lines).encode("utf-8"))
        out = run_java(
            [
                "-cp",
                str(_PTB_JAR),
                "edu.stanford.nlp.process.PTBTokenizer",
                "-preserveLines",
                "-lowerCase",
                str(text_file),
            ],
            what="PTB tokenizer",
        )
    tokenized = out.split("\n")
    if len(tokenized) != len(lines):
        raise JavaError(f"PTB tokenizer returned {len(tokenized)} lines for {len(lines)} captions")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS)
        for line in tokenized
    ]


@functools.cache
def java_major() -> int | None:
    """Major version of `java` (8 for "1.8.0_312", 17 for "17.0.15"), or None when there is no java."""
    if shutil.which(JAVA) is None:
        return None
    result = subprocess.run([JAVA, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    first, second = int(match.group(1)), int(match.group(2) or 0)
    return second if first == 1 else first


@functools.cache
def has_source_launcher() -> bool:
    """The source-file launcher (`java Foo.java`) lives in the jdk.compiler module, absent from a bare JRE."""
    result = subprocess.run([JAVA, "--list-modules"], capture_output=True, text=True, check=False)
    return "jdk.compiler@" in result.stdout


class MeteorJvm:
    """pycocoevalcap's METEOR process: its command, working directory and line protocol (SCORE lines through
    its own `Meteor._stat`, then EVAL lines), with stderr in a file instead of a pipe nobody reads, so a JVM
    that dies (its aligner runs out of the 2 GB heap on a 100,000-character caption) is reported with its own
    message, and a chatty one cannot block on a full pipe."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the JVM; closed in close()
        self.meteor_p = subprocess.Popen(
            _METEOR_COMMAND,
            cwd=_METEOR_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def _died(self) -> JavaError:
        """The error of a JVM that stopped answering, with the end of its stderr."""
        self.meteor_p.kill()
        self.meteor_p.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", errors="replace")
        return JavaError.from_stderr("METEOR", self.meteor_p.returncode, stderr, _METEOR_COMMAND)

    def stat(self, hypothesis: str, references: Sequence[str]) -> str:
        """pycocoevalcap's SCORE line for one clip: its statistics line for EVAL."""
        try:
            line = pycoco_meteor.Meteor._stat(self, hypothesis, references)
        except BrokenPipeError:
            line = ""
        if not line:
            raise self._died()
        return line

    def eval(self, statistics: Sequence[str]) -> tuple[float, list[float]]:
        """pycocoevalcap Meteor.compute_score's EVAL step on per-clip statistics lines: (corpus, per clip)."""
        try:
            self.meteor_p.stdin.write(("EVAL" + "".join(f" ||| {s}" for s in statistics) + "\n").encode())
            self.meteor_p.stdin.flush()
            answers = [self.meteor_p.stdout.readline().strip() for _ in range(len(statistics) + 1)]
        except BrokenPipeError:
            answers = [b""]
        if not all(answers):
            raise self._died()
        *per_clip, corpus = (float(line) for line in answers)
        return corpus, per_clip

    def close(self) -> None:
        """Stops the JVM now rather than at interpreter exit."""
        if self.meteor_p.poll() is None:
            self.meteor_p.stdin.close()
            self.meteor_p.kill()
        self.meteor_p.wait()
        self._stderr.close()
