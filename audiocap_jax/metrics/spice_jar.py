"""SPICE: whether it can run here (its jars, a Java with a compiler) and its run through our own `java` call.

pycocoevalcap's Spice() downloads the Stanford CoreNLP 3.6.0 jars on first use, which fails offline, and its
`-cache` and `-out` options die on Java 17; so `spice_status` only looks at files (no network), and
`run_spice` runs the same jar with the same input and options except those two (docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from audiocap_jax.metrics import java

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_JAR = "spice-1.0.jar"
SPICE_FIX = "scripts/get_stanford_models.sh"

# SPICE's `-out` pretty-prints through the Nashorn JavaScript engine, which Java 15 removed: on Java >= 15
# `java -jar spice-1.0.jar ... -out f` scores everything and then dies with a NullPointerException. This shim
# runs the same SpiceScorer.scoreBatch without `-out` and writes the same JSON (`SpiceStats.toJSONString`,
# which `-out` only re-indents). It runs through java's source-file launcher, which needs a JDK.
_SPICE_JSON_SHIM = """\
import edu.anu.spice.SpiceArguments;
import edu.anu.spice.SpiceScorer;
import java.lang.reflect.Constructor;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;

public class SpiceJson {
  // args: <out.json> <in.json> [SPICE options without -out]
  public static void main(String[] args) throws Exception {
    Constructor<SpiceScorer> newScorer = SpiceScorer.class.getDeclaredConstructor();
    Constructor<SpiceArguments> newArguments = SpiceArguments.class.getDeclaredConstructor(String[].class);
    newScorer.setAccessible(true);
    newArguments.setAccessible(true);
    SpiceScorer scorer = newScorer.newInstance();
    scorer.scoreBatch(newArguments.newInstance((Object) Arrays.copyOfRange(args, 1, args.length)));
    Files.write(Paths.get(args[0]), scorer.stats.toJSONString().getBytes(StandardCharsets.UTF_8));
  }
}
"""
_FIRST_JAVA_WITHOUT_NASHORN = 15
# Reflection-heavy libraries in SPICE's class path (fst) need these on Java >= 9; harmless otherwise.
_ADD_OPENS = ("java.base/java.lang", "java.base/java.util", "java.base/java.io", "java.base/java.math")


class SpiceUnavailableError(FileNotFoundError):
    """SPICE was required (`spice=True`) but cannot run here; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class SpiceStatus:
    """What `spice_status` found: whether SPICE can run from `spice_dir`, and if not, why (with the fix)."""

    available: bool
    reason: str | None  # one line with the fix when not available
    spice_dir: Path
    java_major: int | None = None


def default_spice_dir() -> Path:
    """pycocoevalcap's `spice/` folder (spice-1.0.jar + lib/), found without importing its Spice class."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pycocoevalcap is not installed; `pip install pycocoevalcap`")
    return Path(next(iter(spec.submodule_search_locations))) / "spice"


def spice_status(spice_dir: str | Path | None = None) -> SpiceStatus:
    """Says whether SPICE can run, without touching the network (pycocoevalcap's Spice() would download).

    Checks spice-1.0.jar and the two CoreNLP 3.6.0 jars in `<spice_dir>/lib` (present and readable as zip
    files, which catches truncated downloads), and a usable `java`.
    """
    spice_dir = Path(spice_dir) if spice_dir is not None else default_spice_dir()

    def unavailable(reason: str, major: int | None = None) -> SpiceStatus:
        return SpiceStatus(False, f"SPICE unavailable: {reason}", spice_dir, major)

    jars = [spice_dir / SPICE_JAR] + [spice_dir / "lib" / name for name in CORENLP_JARS]
    absent = [str(p) for p in jars if not p.is_file()]
    if absent:
        return unavailable(f"missing {', '.join(absent)}; fix: {SPICE_FIX}")
    corrupt = [str(p) for p in jars if not zipfile.is_zipfile(p)]
    if corrupt:
        return unavailable(
            f"not a valid jar (truncated download?): {', '.join(corrupt)}; fix: {SPICE_FIX} --force"
        )
    problem = java.java_problem("SPICE")
    if problem is not None:
        return unavailable(problem, java.java_major())
    major = java.java_major()
    if major >= _FIRST_JAVA_WITHOUT_NASHORN and not java.has_source_launcher():
        return unavailable(
            f"Java {major} without a JDK compiler (SPICE's JSON output needs it from Java 15 on); fix: {java.JAVA_FIX}",
            major,
        )
    return SpiceStatus(True, None, spice_dir, major)


def _spice_float(value: object) -> float:
    """pycocoevalcap's float_convert: SPICE writes NaN (e.g. no tuples on either side) as null."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def run_spice(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    spice_dir: str | Path | None = None,
    max_heap: str = "8G",
) -> tuple[float, list[float]]:
    """SPICE F-scores (corpus mean, per clip) for already PTB-tokenised text, as pycocoevalcap's Spice.

    Same jar, input JSON and options as pycocoevalcap except: no `-cache` (its fst serializer needs
    --add-opens on Java >= 17 and its LMDB dir would be shared state), temp files in our own temp dir, and on
    Java >= 15 the JSON is written by `_SPICE_JSON_SHIM` because `-out` needs the removed Nashorn engine.
    """
    spice_dir = Path(spice_dir) if spice_dir is not None else default_spice_dir()
    problem = java.java_problem("SPICE")
    if problem is not None:
        raise FileNotFoundError(problem)
    major = java.java_major()
    input_data = [
        {"image_id": i, "test": c, "refs": list(r)}
        for i, (c, r) in enumerate(zip(candidates, references, strict=True))
    ]
    spice_options = ["-subset", "-silent"]
    with tempfile.TemporaryDirectory(prefix="audiocap_spice_") as tmp:
        in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
        in_file.write_text(json.dumps(input_data, indent=2), encoding="utf-8")
        jvm_options = [f"-Xmx{max_heap}"]
        if major >= 9:
            jvm_options += [f"--add-opens={package}=ALL-UNNAMED" for package in _ADD_OPENS]
        if major >= _FIRST_JAVA_WITHOUT_NASHORN:
            shim = Path(tmp) / "SpiceJson.java"
            shim.write_text(_SPICE_JSON_SHIM, encoding="utf-8")
            args = [
                *jvm_options,
                "-cp",
                str(spice_dir / SPICE_JAR),
                str(shim),
                str(out_file),
                str(in_file),
                *spice_options,
            ]
        else:
            args = [
                *jvm_options,
                "-jar",
                str(spice_dir / SPICE_JAR),
                str(in_file),
                "-out",
                str(out_file),
                *spice_options,
            ]
        logging.info("metrics: running SPICE on %d clips (minutes for a few thousand)", len(candidates))
        java.run_java(args, what="SPICE")
        results = json.loads(out_file.read_text(encoding="utf-8"))
    by_id = {item["image_id"]: _spice_float(item["scores"]["All"]["f"]) for item in results}
    per_clip = [by_id[i] for i in range(len(candidates))]
    return float(np.mean(np.array(per_clip))), per_clip


def score_items(
    items: Sequence[tuple[str, str]], references: Mapping[str, list[str]], spice_dir: Path
) -> tuple[list[float], dict[str, str]]:
    """SPICE of each (file name, tokenised caption) against the clip's references, in one run, or halved runs
    until the captions at fault are found: (values in item order, {} ) or ([], file name -> SPICE's error)."""
    found, failures = java.isolate_failures(
        lambda chosen: run_spice(
            [items[i][1] for i in chosen], [references[items[i][0]] for i in chosen], spice_dir=spice_dir
        )[1],
        len(items),
        "SPICE",
    )
    if failures:
        return [], {items[i][0]: cause for i, cause in failures.items()}
    return [found[i] for i in range(len(items))], {}
