"""Tests for the audiocap_jax.metrics package: pycocoevalcap identity, SPICE detection, keywords, alignment, file formats.

JVM budget: one `score` run (PTB + METEOR) and one pycocoevalcap oracle run, both module-scoped.
"""

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from audiocap_jax import csv_cells
from audiocap_jax.metrics import caption_files, java, keywords, scorecard, scoring, spice_jar

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "get_stanford_models.sh"

# 5 clips x 5 references with punctuation, quotes, unicode and a comma in a file name.
REFERENCES = {
    "rain, heavy.wav": [
        "Heavy rain falls on a metal roof.",
        "Rain is pouring down onto a tin roof!",
        "Water drips, and rain patters on the roof.",
        "A downpour hits a corrugated roof -- loudly.",
        "Rain falling steadily on a roof; thunder rumbles.",
    ],
    "dog.wav": [
        "A dog barks repeatedly at something.",
        "A dog is barking while a man shouts.",
        "Someone's dog barks; birds chirp in the background.",
        "A large dog barks (loudly) several times.",
        "Dogs bark and a person whistles.",
    ],
    "café.wav": [
        "People chat in a busy café while cups clink.",
        "Crowd chatter and dishes clattering in a restaurant.",
        "Many people talk at once in a crowded “coffee shop”.",
        "Voices murmur as an espresso machine hisses.",
        "Patrons converse; cutlery clinks on plates.",
    ],
    "birds.wav": [
        "Birds chirp and sing in the morning.",
        "Several birds are chirping outdoors, wind blows.",
        "Birdsong fills the air near a stream.",
        "Small birds tweet while leaves rustle.",
        "A bird calls repeatedly; others answer.",
    ],
    "quiet.wav": [
        "Silence, then a faint click.",
        "Almost nothing is heard.",
        "A quiet room with a soft hum.",
        "Faint background noise.",
        "A clock ticks quietly.",
    ],
}
PREDICTIONS = {
    "rain, heavy.wav": "Rain falls heavily on a metal roof!",
    "dog.wav": "A dog barks, and a man shouts.",
    "café.wav": "People talk in a busy “café” (cups clink)...",
    "birds.wav": "Birds are chirping; the wind blows.",
    "quiet.wav": "... !",  # nothing left after tokenisation: scored as empty, with a warning
}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    # An empty folder as spice_dir: SPICE is unavailable whatever is installed on this machine.
    return scoring.score(
        PREDICTIONS, REFERENCES, scoring.ScoreOptions(spice_dir=tmp_path_factory.mktemp("no_spice"))
    )


@pytest.fixture(scope="module")
def oracle():
    """pycocoevalcap's own tokenizer and scorers, called as COCOEvalCap does, in sorted clip order."""
    names = sorted(REFERENCES)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({n: [{"caption": c} for c in REFERENCES[n]] for n in names})
    res = tokenizer.tokenize({n: [{"caption": PREDICTIONS[n]}] for n in names})
    bleu, bleu_clips = Bleu(4).compute_score(gts, res)
    scores = {f"bleu_{i + 1}": (bleu[i], bleu_clips[i]) for i in range(4)}
    scores["meteor"] = Meteor().compute_score(gts, res)
    scores["rouge_l"] = Rouge().compute_score(gts, res)
    scores["cider_d"] = Cider().compute_score(gts, res)
    return names, gts, res, scores


def test_scores_identical_to_pycocoevalcap(ours, oracle):
    names, _, _, scores = oracle
    for metric, (corpus, per_clip) in scores.items():
        assert ours.corpus[metric] == corpus, metric
        assert [ours.per_clip[n][metric] for n in names] == list(per_clip), metric


def test_score_values(ours):
    expected = {
        "bleu_1": 0.8420,
        "bleu_2": 0.7176,
        "bleu_3": 0.5352,
        "bleu_4": 0.3553,
        "meteor": 0.3450,
        "rouge_l": 0.6037,
        "cider_d": 1.1403,
    }
    assert {k: ours.corpus[k] for k in expected} == pytest.approx(expected, abs=5e-5)
    assert ours.per_clip["dog.wav"]["cider_d"] == pytest.approx(1.8521, abs=5e-5)
    assert ours.per_clip["quiet.wav"]["cider_d"] == 0.0
    assert ours.num_clips == 5
    assert ours.warnings == ["1 predictions are only punctuation (scored as empty): 'quiet.wav'"]


def test_spice_unavailable_is_none_with_fix_and_other_metrics_survive(ours):
    assert ours.corpus["spice"] is None
    assert ours.corpus["spider"] is None
    assert "stanford-corenlp-3.6.0.jar" in ours.unavailable["spice"]
    assert "scripts/get_stanford_models.sh" in ours.unavailable["spice"]
    assert "\n" not in ours.unavailable["spice"]
    assert ours.unavailable["spider"].startswith("SPIDEr needs SPICE")
    assert all(isinstance(ours.corpus[m], float) for m in ("bleu_4", "meteor", "rouge_l", "cider_d"))
    assert "spice" not in ours.per_clip["dog.wav"]


def test_spice_required_but_missing_raises_before_scoring(tmp_path):
    with pytest.raises(spice_jar.SpiceUnavailableError, match="get_stanford_models.sh"):
        scoring.score(PREDICTIONS, REFERENCES, scoring.ScoreOptions(spice=True, spice_dir=tmp_path))
    with pytest.raises(ValueError, match="'auto', True or False"):
        scoring.score(PREDICTIONS, REFERENCES, scoring.ScoreOptions(spice="yes"))


def test_ptb_tokenize_matches_pycocoevalcap_and_separators_cannot_shift_lines(oracle):
    names, gts, res, _ = oracle
    tricky = ["A dog, barks!", "Café (naïve) “quoted”", "...", "two\u2028lines\r\nhere", "   "]
    flat_refs = [c for n in names for c in REFERENCES[n]]
    tokens = java.ptb_tokenize(tricky + [PREDICTIONS[n] for n in names] + flat_refs)
    # pycocoevalcap quirk kept on purpose: with -lowerCase brackets become -lrb-/-rrb-, which its punctuation
    # list (uppercase -LRB-) does not remove.
    assert tokens[:5] == ["a dog barks", "café -lrb- naïve -rrb- quoted", "", "two lines here", ""]
    assert tokens[5:10] == [res[n][0] for n in names]
    assert tokens[10:] == [c for n in names for c in gts[n]]


def test_table_and_json(ours, tmp_path):
    table = scorecard.format_table(ours)
    assert "| metric (5 clips) | score |" in table
    assert "| CIDEr-D | 1.1403 |" in table
    assert "| SPICE | n/a |" in table
    assert "get_stanford_models.sh" in table
    out = tmp_path / "scores.json"
    scorecard.write_json(out, ours, checkpoint="ckpt/1500")
    loaded = json.loads(out.read_text(encoding="utf-8"))
    assert loaded["checkpoint"] == "ckpt/1500"
    assert loaded["num_clips"] == 5
    assert loaded["corpus"]["spice"] is None
    assert loaded["per_clip"]["café.wav"]["cider_d"] == ours.per_clip["café.wav"]["cider_d"]


# --------------------------------------------------------------------------------------------------------
# SPICE detection and invocation (no network, no mocks: real files in tmp_path).
# --------------------------------------------------------------------------------------------------------


def _fake_jar(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")


def _fake_spice_dir(root: Path, jars=spice_jar.CORENLP_JARS) -> Path:
    _fake_jar(root / spice_jar.SPICE_JAR)
    for name in jars:
        _fake_jar(root / "lib" / name)
    return root


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK (java 17 here)")
def test_spice_status_detects_jars(tmp_path):
    status = spice_jar.spice_status(_fake_spice_dir(tmp_path / "ok"))
    assert status.available, status.reason
    assert status.java_major >= 8

    missing = spice_jar.spice_status(_fake_spice_dir(tmp_path / "missing", jars=spice_jar.CORENLP_JARS[:1]))
    assert not missing.available
    assert str(tmp_path / "missing" / "lib" / "stanford-corenlp-3.6.0-models.jar") in missing.reason
    assert "stanford-corenlp-3.6.0.jar," not in missing.reason
    assert missing.reason.endswith("fix: scripts/get_stanford_models.sh")

    truncated = _fake_spice_dir(tmp_path / "truncated")
    (truncated / "lib" / "stanford-corenlp-3.6.0.jar").write_bytes(b"PK\x03\x04 truncated")
    status = spice_jar.spice_status(truncated)
    assert not status.available
    assert "not a valid jar" in status.reason and "stanford-corenlp-3.6.0.jar" in status.reason
    assert status.reason.endswith("fix: scripts/get_stanford_models.sh --force")


@pytest.mark.skipif(
    shutil.which("javac") is None or spice_jar.spice_status().available,
    reason="needs a JDK, and the CoreNLP jars absent (else this would run a full SPICE)",
)
def test_spice_shim_compiles_and_reaches_the_scorer():
    # The Java >= 15 path compiles our shim against the real spice-1.0.jar and calls SpiceScorer.scoreBatch;
    # without CoreNLP it must fail inside SPICE's parser, with Java's error surfaced.
    with pytest.raises(java.JavaError, match="edu/stanford/nlp") as error:
        spice_jar.run_spice(["a dog barks"], [["a dog is barking"]])
    assert str(error.value).startswith("SPICE failed (exit 1): ")
    assert "SpiceParser" in str(error.value)


def test_isolate_failures_names_the_items_at_fault_and_keeps_the_rest():
    runs = []

    def tool(items):
        runs.append(list(items))
        if {5, 11} & set(items):
            raise java.JavaError("PTB tokenizer failed (exit 1): boom", "java.lang.StackOverflowError")
        return [f"t{i}" for i in items]

    results, failures = java.isolate_failures(tool, 16, "PTB tokenizer")
    assert failures == {5: "java.lang.StackOverflowError", 11: "java.lang.StackOverflowError"}
    assert results == {i: f"t{i}" for i in range(16) if i not in (5, 11)}
    assert len(runs) <= 2 * 4 * 2 + 1  # two halvings per level, four levels, for each of two bad items

    def broken(items):
        raise java.JavaError("PTB tokenizer failed (exit 1): no class", "ClassNotFoundException")

    with pytest.raises(java.JavaError):  # nothing ran at all: the tool's failure, not the clips'
        java.isolate_failures(broken, 3, "PTB tokenizer")


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=False)


def _corenlp_zip(path: Path, members: tuple[str, ...] = spice_jar.CORENLP_JARS) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("stanford-corenlp-full-2015-12-09/README.txt", "readme")
        for name in members:
            jar = path.parent / name
            _fake_jar(jar)
            archive.write(jar, f"stanford-corenlp-full-2015-12-09/{name}")
    return path


def test_script_arguments():
    assert _run_script("--help").stdout.startswith("usage: scripts/get_stanford_models.sh")
    unknown = _run_script("--bogus")
    assert unknown.returncode == 2
    assert "unknown argument '--bogus'" in unknown.stderr
    no_value = _run_script("--zip")
    assert no_value.returncode == 2
    assert "--zip needs a value" in no_value.stderr
    dry = _run_script("--python", sys.executable, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == str(spice_jar.default_spice_dir() / "lib")


def test_script_installs_jars_from_zip(tmp_path):
    spice_dir = tmp_path / "spice"
    _fake_jar(spice_dir / spice_jar.SPICE_JAR)
    (tmp_path / "dl").mkdir()
    corenlp_zip = _corenlp_zip(tmp_path / "dl" / "corenlp.zip")
    common = ("--python", sys.executable, "--spice-dir", str(spice_dir))

    result = _run_script(*common, "--zip", str(corenlp_zip))
    assert result.returncode == 0, result.stderr
    for name in spice_jar.CORENLP_JARS:
        assert zipfile.is_zipfile(spice_dir / "lib" / name)
        assert f"installed {spice_dir / 'lib' / name}" in result.stdout
    again = _run_script(*common, "--zip", str(corenlp_zip))
    assert again.stdout.startswith("already installed in")


def test_script_refuses_wrong_inputs(tmp_path):
    (tmp_path / "dl").mkdir()
    partial_zip = _corenlp_zip(tmp_path / "dl" / "partial.zip", members=spice_jar.CORENLP_JARS[:1])
    spice_dir = tmp_path / "spice"
    _fake_jar(spice_dir / spice_jar.SPICE_JAR)
    result = _run_script("--python", sys.executable, "--spice-dir", str(spice_dir), "--zip", str(partial_zip))
    assert result.returncode == 1
    assert "has no stanford-corenlp-full-2015-12-09/stanford-corenlp-3.6.0-models.jar" in result.stderr
    assert not (spice_dir / "lib" / "stanford-corenlp-3.6.0.jar").exists()  # nothing half-installed

    not_spice = _run_script("--python", sys.executable, "--spice-dir", str(tmp_path / "dl"))
    assert not_spice.returncode == 1
    assert "has no spice-1.0.jar" in not_spice.stderr


# --------------------------------------------------------------------------------------------------------
# Keywords.
# --------------------------------------------------------------------------------------------------------


def test_keyword_scores_literal_values():
    predictions = {
        "a": "dog, bark, animal",
        "b": "music",
        "c": "speech, Male speech - man speaking",
        "d": "Dog",
    }
    references = {
        "a": ["animal, dog, domestic animals - pets"],
        "b": ["speech"],
        "c": ["speech, male speech - man speaking, conversation"],
        "d": ["dog", "bark, dog"],  # several references: their keyword union
    }
    scores = keywords.score_keywords(predictions, references)
    assert scores.corpus == pytest.approx(
        {
            "keyword_precision_micro": 5 / 7,
            "keyword_recall_micro": 5 / 9,
            "keyword_f1_micro": 10 / 16,
            "keyword_precision_macro": 2 / 3,
            "keyword_recall_macro": 11 / 24,
            "keyword_f1_macro": 8 / 15,
            "keyword_jaccard": 5 / 12,
        }
    )
    assert scores.per_clip["c"] == pytest.approx(
        {"keyword_precision": 1.0, "keyword_recall": 2 / 3, "keyword_f1": 0.8, "keyword_jaccard": 2 / 3}
    )
    assert keywords.split_keywords(" Dog, ,bark ,") == {"dog", "bark"}


# --------------------------------------------------------------------------------------------------------
# Alignment.
# --------------------------------------------------------------------------------------------------------


def test_align_names_missing_and_extra_files():
    references = {"a.wav": ["x"], "b.wav": ["y"], "c.wav": ["z"]}
    with pytest.raises(
        caption_files.AlignmentError, match=r"1 referenced clips have no prediction: 'b.wav'"
    ) as error:
        caption_files.align({"a.wav": "x", "c.wav": "z"}, references)
    assert error.value.missing == ["b.wav"]
    with pytest.raises(caption_files.AlignmentError, match=r"predicted clips have no references: 'd.wav'"):
        caption_files.align({"a.wav": "x", "b.wav": "y", "c.wav": "z", "d.wav": "w"}, references)

    aligned = caption_files.align(
        {"a.wav": "x", "d.wav": "w"}, references, allow_missing=True, allow_extra=True
    )
    assert aligned.file_names == ["a.wav"]
    assert aligned.warnings == [
        "2 referenced clips have no prediction: 'b.wav', 'c.wav' (left out)",
        "1 predicted clips have no references: 'd.wav' (left out)",
    ]
    with pytest.raises(caption_files.AlignmentError, match="no file name is in both"):
        caption_files.align({"audio/a.wav": "x"}, references)


def test_align_empty_captions_and_types():
    aligned = caption_files.align({"a": "  ", "b": "y"}, {"a": ["x", ""], "b": ["y"]})
    assert aligned.predictions == {"a": "  ", "b": "y"}  # kept: an empty caption scores ~0, not skipped
    assert aligned.references == {"a": ["x"], "b": ["y"]}
    assert aligned.warnings == [
        "1 empty predictions (scored as empty): 'a'",
        "empty reference captions ignored for 1 clips: 'a'",
    ]
    with pytest.raises(caption_files.AlignmentError, match="only empty reference captions: 'b'"):
        caption_files.align({"a": "x", "b": "y"}, {"a": ["x"], "b": ["", " "]})
    with pytest.raises(TypeError, match="references for 'a' is str"):
        caption_files.align({"a": "x"}, {"a": "x"})


def test_many_names_are_abbreviated():
    references = {f"{i:02d}.wav": ["x"] for i in range(15)}
    with pytest.raises(
        caption_files.AlignmentError, match=r"14 referenced clips .* '10.wav' \.\.\. and 4 more\."
    ):
        caption_files.align({"00.wav": "x"}, references)


# --------------------------------------------------------------------------------------------------------
# File formats.
# --------------------------------------------------------------------------------------------------------


def test_predictions_csv_round_trip_with_quoted_commas(tmp_path):
    predictions = {
        "rain, heavy.wav": 'rain "pours", hard',
        "café.wav": "people chat, cups clink",
        "multi.wav": "first line\nsecond line",
    }
    path = tmp_path / "out.csv"
    caption_files.write_predictions_csv(path, predictions)
    text = path.read_bytes().decode("utf-8")
    assert text.startswith("file_name,caption_predicted\n")  # like pandas' to_csv, which the original used
    assert '"rain, heavy.wav","rain ""pours"", hard"' in text
    assert caption_files.read_predictions_csv(path) == predictions


def test_csv_writers_guard_formula_cells_and_our_reader_gives_them_back(tmp_path):
    """Cells a spreadsheet would run as formulas get a leading quote; our reader gives back every string."""
    predictions = {
        "=HYPERLINK(1).wav": "+a dog barks",
        "-0RWZT-miFs_30000.wav": "@SUM(A1)",
        "\tcmd.wav": "\r=1+1",
        "quoted.wav": "'=already quoted",
        "twice.wav": "''",
        "plain.wav": "'tis a dog - barking",
    }
    path = tmp_path / "out.csv"
    caption_files.write_predictions_csv(path, predictions)
    with path.open(newline="", encoding="utf-8") as f:
        cells = dict(list(csv.reader(f))[1:])
    assert cells == {
        "'=HYPERLINK(1).wav": "'+a dog barks",
        "'-0RWZT-miFs_30000.wav": "'@SUM(A1)",
        "'\tcmd.wav": "'\r=1+1",
        "quoted.wav": "''=already quoted",
        "twice.wav": "'''",
        "plain.wav": "'tis a dog - barking",
    }
    assert caption_files.read_predictions_csv(path) == predictions
    assert caption_files.read_candidates_csv(path) == {k: [v] for k, v in predictions.items()}
    assert csv_cells.guarded(["-a", -0.5, 3]) == ["'-a", -0.5, 3]  # numbers stay numbers


def test_predictions_csv_duplicates_and_bad_rows(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("file_name,caption_predicted\na.wav,x\na.wav,x\nb.wav,y\n", encoding="utf-8")
    assert caption_files.read_predictions_csv(path) == {"a.wav": "x", "b.wav": "y"}
    path.write_text("file_name,caption_predicted\na.wav,x\nb.wav,y\na.wav,z\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 file names have several different prediction rows: 'a.wav'"):
        caption_files.read_predictions_csv(path)
    path.write_text("file_name,caption_predicted\na.wav,a dog, barks\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: more fields than the 2 header columns"):
        caption_files.read_predictions_csv(path)
    path.write_text("file,caption\na.wav,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks columns \['file_name', 'caption_predicted'\]"):
        caption_files.read_predictions_csv(path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        caption_files.read_predictions_csv(tmp_path / "nope.csv")


def test_read_clotho_references_csv(tmp_path):
    path = tmp_path / "clotho_captions_evaluation.csv"
    rows = [
        ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"],
        ["rain, heavy.wav", "Rain falls, hard.", "a", "b", "c", "d"],
        ["café.wav", "People chat in a “café”.", "e", "f", "g", ""],
    ]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    assert caption_files.read_references(path) == {
        "rain, heavy.wav": ["Rain falls, hard.", "a", "b", "c", "d"],
        "café.wav": ["People chat in a “café”.", "e", "f", "g"],
    }


def test_read_audiofolder_references_jsonl(tmp_path):
    lines = [
        {"file_name": "x.wav", "caption_2": "second", "caption_10": "tenth", "caption_1": "first"},
        {"file_name": "sub/y.wav", "caption_1": "only", "caption_2": None},
        {"file_name": "z.wav", "caption": "single caption column"},
    ]
    (tmp_path / "metadata.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8"
    )
    assert caption_files.read_references(tmp_path) == {
        "x.wav": ["first", "second", "tenth"],
        "sub/y.wav": ["only"],
        "z.wav": ["single caption column"],
    }
    (tmp_path / "bad.jsonl").write_text(
        '{"file_name": "a.wav", "caption_predicted": "x"}\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"no reference caption columns"):
        caption_files.read_references(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="unknown reference format '.txt'"):
        caption_files.read_references(tmp_path / "refs.txt")
