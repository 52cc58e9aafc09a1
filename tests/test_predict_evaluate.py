"""`predict` and `evaluate` on a tiny random HF Whisper: CSV and log, skipped files, long clips, scoring."""

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from flax import nnx

from audiocap_jax import audio, cli, csv_cells, evaluate, predict, preflight, text
from audiocap_jax.corpus import worklist
from audiocap_jax.decoding import evaluator, inference, search_settings
from audiocap_jax.metrics import caption_files, scorecard, scoring
from audiocap_jax.model import sharding
from audiocap_jax.rundir import load
from audiocap_jax.testing import audio as test_audio
from audiocap_jax.testing import tfds_data
from audiocap_jax.testing.models import save_tiny_hf_whisper

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
    spec = REPO / "configs" / "predict.py"
    namespace: dict = {}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    config = namespace["get_config"]()
    config.update(dict(num_beams=2, max_length=20, batch_size=8), **overrides)
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_hf")
    save_tiny_hf_whisper(path, seed=3, max_source_positions=1500)  # 3000 frames: real 30 s inputs
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    test_audio.write_audio(folder / "rain, heavy.wav", test_audio.noise(3.0, seed=1))
    test_audio.write_audio(folder / "café tone.flac", test_audio.tone(2.0, 440.0))
    test_audio.write_audio(folder / "speech.ogg", test_audio.speech_like(4.0))
    (folder / "nested").mkdir()
    test_audio.write_audio(folder / "nested" / "long.wav", test_audio.speech_like(35.0, seed=2))
    test_audio.write_truncated_wav(folder / "broken.wav")
    (folder / "notes.txt").write_text("not audio, and not listed")
    return folder


def test_predict_writes_csv_and_log_and_skips_broken_files(checkpoint, clips, tmp_path, capsys):
    out = tmp_path / "out.csv"
    log = predict.predict(
        str(checkpoint), clips, out, _config(num_return_sequences=2), predict.Options(recursive=True)
    )
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows] == [
        "café tone.flac",
        "nested/long.wav",
        "rain, heavy.wav",
        "speech.ogg",
    ]
    assert all(r["caption_predicted"] == r["caption_predicted"].strip() for r in rows)
    written = json.loads((tmp_path / "out_log.json").read_text())
    assert written["num_files"] == 5 and written["num_captioned"] == 4
    assert [f["file_name"] for f in written["failed_files"]] == ["broken.wav"]
    assert written["prompt_ids"] == [50258, 50259, 50359, 50363, 3474, 900, 78, 12331, 31974, 25, 220]
    assert log["settings"]["num_beams"] == 2
    raw = capsys.readouterr().out
    assert (
        "rain, heavy.wav\t<|startoftranscript|><|en|><|transcribe|><|notimestamps|>clotho > caption:" in raw
    )
    # The N-best CSV: both beams of every clip, rank 1 = the CSV's caption, scores descending.
    nbest = _read(tmp_path / "out_nbest.csv")
    assert log["nbest_file"] == str(tmp_path / "out_nbest.csv")
    assert list(nbest[0]) == ["file_name", "rank", "caption", "score"]
    assert [(r["file_name"], r["rank"]) for r in nbest] == [(r["file_name"], k) for r in rows for k in "12"]
    assert [r["caption"] for r in nbest if r["rank"] == "1"] == [r["caption_predicted"] for r in rows]
    scores = [float(r["score"]) for r in nbest]
    assert all(best >= second for best, second in zip(scores[::2], scores[1::2], strict=True))


def test_nbest_csv_guards_formula_cells(tmp_path):
    """A caption or file name starting with = + - @ is written with a leading quote; scores stay numbers."""
    candidates = (inference.Candidate("=1+1", -0.5), inference.Candidate("a dog", -0.75))
    found = inference.Prediction("-0RWZT-miFs.wav", "=1+1", "", -0.5, candidates=candidates)
    inference.write_nbest_csv(tmp_path / "out_nbest.csv", [found])
    assert (tmp_path / "out_nbest.csv").read_text(encoding="utf-8").splitlines() == [
        "file_name,rank,caption,score",
        "'-0RWZT-miFs.wav,1,'=1+1,-0.5",
        "'-0RWZT-miFs.wav,2,a dog,-0.75",
    ]


def test_batch_padding_does_not_change_captions(checkpoint, clips, tmp_path):
    """The last, padded batch and a full batch caption a clip identically (padding rows are masked)."""
    predict.predict(str(checkpoint), clips, tmp_path / "a.csv", _config(batch_size=8))
    predict.predict(
        str(checkpoint), clips, tmp_path / "b.csv", _config(batch_size=16), predict.Options(take_first_n=3)
    )  # broken.wav, café, rain
    a = caption_files.read_predictions_csv(tmp_path / "a.csv")
    b = caption_files.read_predictions_csv(tmp_path / "b.csv")
    assert set(b) == {"café tone.flac", "rain, heavy.wav"}
    assert {k: a[k] for k in b} == b


def test_long_clips_as_windows(checkpoint, clips, tmp_path):
    predict.predict(str(checkpoint), clips / "nested", tmp_path / "w.csv", _config(long_audio="windows"))
    assert list(caption_files.read_predictions_csv(tmp_path / "w.csv")) == ["long.wav#t=0", "long.wav#t=30"]


def test_exit_codes_of_skipped_files_and_no_partial_output(checkpoint, tmp_path):
    """Some files undecodable: exit 3 (cli.EXIT_PARTIAL) with the rest captioned; none decodable: exit 2, no CSV."""
    folder = tmp_path / "clips"
    folder.mkdir()
    test_audio.write_not_audio(folder / "a.wav")

    def run(output):
        return subprocess.run(
            [sys.executable, "-m", "audiocap_jax.predict", f"--checkpoint={checkpoint}", f"--data={folder}",
             f"--output-file={output}", "--config-file.max_length=16", "--config-file.num_beams=1"],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        )  # fmt: skip

    nothing = run(tmp_path / "none.csv")
    assert nothing.returncode == 2, nothing.stderr[-3000:]
    assert (
        "Error: none of the 1 files in" in nothing.stderr
        and "a.wav: not a readable audio file" in nothing.stderr
    )
    assert "fix: check the files with `python -m audiocap_jax.data.prepare find-corrupted" in nothing.stderr
    assert not list(tmp_path.glob("none*"))

    test_audio.write_audio(folder / "b.wav", test_audio.tone(1.0, 440.0))
    partial = run(tmp_path / "some.csv")
    assert partial.returncode == 3, partial.stderr[-3000:]
    assert "Captioned 1 of 2 files; 1 failed to decode (listed in some_log.json)" in partial.stderr
    assert list(caption_files.read_predictions_csv(tmp_path / "some.csv")) == ["b.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clips",
        "some.csv",
        "some.csv.shards",
        "some_log.json",
        "some_nbest.csv",
    ]  # no temp files
    assert sorted(p.name for p in (tmp_path / "some.csv.shards").iterdir()) == [
        "0.csv",
        "0.json",
        "0_nbest.csv",
        "manifest.json",
    ]


def test_evaluate_predictions_against_clotho_csv(tmp_path):
    references = tmp_path / "clotho_captions_evaluation.csv"
    with references.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", *(f"caption_{i}" for i in range(1, 6))])
        writer.writerow(
            ["a.wav", "A dog barks, loudly.", "a dog barks", "dog barking", "a dog is barking", "barks"]
        )
        writer.writerow(
            ["b.wav", "Rain falls on a roof.", "rain on a roof", "it rains", "rain falls", "heavy rain"]
        )
    predictions = {"a.wav": "a dog barks", "b.wav": "rain falls on the roof"}
    scores = scoring.score(
        predictions, caption_files.read_references(references), scoring.ScoreOptions(spice=False)
    )
    with pytest.raises(caption_files.AlignmentError, match="'c.wav'"):
        scoring.score(
            {**predictions, "c.wav": "x"},
            caption_files.read_references(references),
            scoring.ScoreOptions(spice=False),
        )
    extra = scoring.score(
        {**predictions, "c.wav": "x"},
        caption_files.read_references(references),
        scoring.ScoreOptions(allow_extra=True, spice=False),
    )
    assert extra.corpus == scores.corpus


def test_evaluate_names_the_clip_a_metric_tool_fails_on_and_writes_the_rest(tmp_path):
    """A 100,000-character caption kills METEOR's JVM (OutOfMemoryError): before, exit 1 with a traceback and no
    scores; now the clip and Java's message are named, METEOR is n/a and every other score is written."""
    predictions = tmp_path / "preds.csv"
    captions = {"a.wav": "a dog barks", "b.wav": ("rain falls " * 10000)[:100000], "c.wav": "birds chirp"}
    caption_files.write_predictions_csv(predictions, captions)
    references = tmp_path / "refs.csv"
    with references.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [["file_name", "caption"], ["a.wav", "a dog barks"], ["b.wav", "rain falls"], ["c.wav", "birds"]]
        )
    found = subprocess.run(
        [sys.executable, "-m", "audiocap_jax.evaluate", f"--predictions={predictions}",
         f"--references={references}", "--spice=off"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
    )  # fmt: skip
    assert found.returncode == cli.EXIT_PARTIAL, found.stderr[-3000:]
    assert "Traceback" not in found.stderr
    assert "| METEOR | n/a |" in found.stdout
    assert "METEOR failed on 1 clip: 'b.wav' (java.lang.OutOfMemoryError: Java heap space)" in found.stdout
    written = json.loads((tmp_path / "preds_scores.json").read_text())
    assert written["failed_clips"] == {"b.wav": ["METEOR: java.lang.OutOfMemoryError: Java heap space"]}
    assert written["corpus"]["meteor"] is None
    assert all(written["corpus"][k] is not None for k in ("bleu_4", "rouge_l", "cider_d"))


@pytest.fixture(scope="module")
def tfds_build(tmp_path_factory):
    return tfds_data.build_all(tmp_path_factory.mktemp("tfds"))


def test_evaluate_checkpoint_on_tfds_split(checkpoint, tfds_build, tmp_path):
    config = ml_collections.ConfigDict(_config(num_return_sequences=2))
    data_dir = str(tfds_build["audioset_small"].data_dir)
    loaded = evaluate.load_split(str(checkpoint), "audioset", "valid", data_dir, config)
    output = evaluator.Output(evaluate.predictions_csv(tmp_path, "audioset"))
    result = evaluate.evaluate_loaded(
        loaded, config, scoring.ScoreOptions(keywords=True, spice=False), output
    )
    found = result.predictions
    predictions = {p.file_name: p.caption for p in found}
    references = {p.file_name: list(p.references) for p in found}
    assert loaded.prefix == "audioset > keywords: "
    assert len(predictions) == 3 and set(predictions) == set(references)
    assert all(len(p.candidates) == 2 and p.candidates[0].caption == p.caption for p in found)
    assert {"cider_d", "keyword_f1_micro", "keyword_precision_macro"} <= set(result.scores.corpus)
    assert _read(tmp_path / "audioset_predictions.csv") == [
        {"file_name": name, "caption_predicted": caption} for name, caption in predictions.items()
    ]
    nbest = _read(tmp_path / "audioset_predictions_nbest.csv")
    assert [r["rank"] for r in nbest] == ["1", "2"] * 3
    assert {r["file_name"]: r["caption"] for r in nbest if r["rank"] == "1"} == predictions


def _read(path):
    """Rows of one of our CSVs, cells as written (`csv_cells.unguard` undoes the spreadsheet guard)."""
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: csv_cells.unguard(v) for k, v in row.items()} for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------------
# Decoding config, N-best lists, reranking, plain prompts, the sweep.
# ---------------------------------------------------------------------------------------------------------
def test_eval_section_and_predict_config_carry_every_decoding_key():
    namespace: dict = {}
    exec(compile((REPO / "configs" / "base.py").read_text(), "base.py", "exec"), namespace)
    eval_section = namespace["get_config"]().eval
    predict_config = _config()
    assert set(search_settings.DECODING_KEYS) <= set(eval_section) & set(predict_config)
    comments = cli.config_comments(REPO / "configs" / "predict.py")
    assert all(comments.get(k) for k in search_settings.DECODING_KEYS), "every decoding key has a --help line"


def test_decode_settings_return_every_candidate_to_a_reranker():
    tokenizer = text.Tokenizer.from_assets()
    settings = inference.decode_settings(_config(num_beams=4, rerank="mbr"), tokenizer, None)
    assert (settings.num_beams, settings.num_return_sequences, settings.eos_id) == (4, 4, 50257)
    plain = inference.decode_settings(_config(num_beams=4, num_return_sequences=3), tokenizer, None)
    assert plain.num_return_sequences == 3


@pytest.mark.parametrize(
    "overrides, problem, fix",
    [
        (
            dict(strategy="greedy"),
            "--config-file.strategy 'greedy' unknown",
            "change that --config-file value",
        ),
        (dict(temperature=0.5), '--config-file.temperature=0.5 only apply to strategy="sample"', "--help"),
        (
            dict(no_repeat_ngram_size=100000),
            "--config-file.no_repeat_ngram_size 100000 can never ban a token with max_length 20",
            "change that --config-file value",
        ),
        (dict(num_beams=4, num_beam_groups=3), "--config-file.num_beam_groups 3 must be >= 1 and divide", ""),
        (
            dict(num_return_sequences=3),
            "--config-file.num_return_sequences 3 must be between 1 and num_beams 2",
            "",
        ),
        (
            dict(rerank="best"),
            "--config-file.rerank 'best' is neither",
            "set --config-file.rerank to one of none",
        ),
        (
            dict(rerank="no_such_plugin_mod:score"),
            "module 'no_such_plugin_mod' does not import",
            "importable",
        ),
        (
            dict(style="clotho"),
            "--config-file.style: style 'clotho' is not of the form",
            "or 'none' for no prefix",
        ),
    ],
)
def test_preflight_rejects_bad_decoding_values(overrides, problem, fix):
    with pytest.raises(cli.UserError) as error:
        preflight.check_decoding(_config(**overrides), "--config-file", 1)
    assert problem in error.value.problem and fix in error.value.fix


PLUGIN_CALLS: list[tuple] = []


def longest_caption(mel, candidates, scores):
    """A plug-in reranker for the test below: the longest caption wins; records what it was given."""
    PLUGIN_CALLS.append((mel.shape, mel.dtype, [len(c) for c in candidates], scores.shape))
    return np.array([[len(c) for c in clip] for clip in candidates], np.float64)


# Whisper's non-speech suppress list as openai/whisper-tiny's generation_config.json carries it.
_WHISPER_SUPPRESS = [
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359, 503, 522, 542,
    873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268, 3536, 3846, 3961, 4183, 4667,
    6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033, 12331, 12562, 13793, 14157, 14635, 15265, 15618,
    16553, 16604, 18362, 18956, 20075, 21675, 22520, 26130, 26161, 26435, 28279, 29464, 31650, 32302, 32470,
    36865, 42863, 47425, 49870, 50254, 50258, 50358, 50359, 50360, 50361, 50362,
]  # fmt: skip


def _released_generation_config(tokenizer):
    """The Whisper fields a released checkpoint's generation_config.json has (what `generate(language=...,
    task=...)` reads), with this tokenizer's special ids."""
    import transformers

    specials = tokenizer.specials
    return transformers.GenerationConfig(
        decoder_start_token_id=specials.sot,
        bos_token_id=specials.eot,
        eos_token_id=specials.eot,
        pad_token_id=specials.eot,
        suppress_tokens=_WHISPER_SUPPRESS,
        begin_suppress_tokens=[220, specials.eot],
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": specials.language(code) for code in specials.languages},
        task_to_id={"transcribe": specials.transcribe, "translate": specials.translate},
        no_timestamps_token_id=specials.notimestamps,
        prev_sot_token_id=specials.startofprev,
        max_initial_timestamp_index=50,
        max_length=448,
    )


@pytest.fixture(scope="module")
def released_whisper(tmp_path_factory):
    """(HF dir, folder of 3 clips): a tiny random HF Whisper with a released checkpoint's generation_config,
    200 mel frames (a 2 s window) for speed."""
    root = tmp_path_factory.mktemp("released_whisper")
    torch_model = save_tiny_hf_whisper(root / "whisper", seed=5)
    torch_model.generation_config = _released_generation_config(text.Tokenizer.from_assets())
    torch_model.generation_config.save_pretrained(root / "whisper")
    (root / "clips").mkdir()
    for seed in range(3):
        test_audio.write_audio(root / "clips" / f"clip{seed}.wav", test_audio.speech_like(2.0, seed=seed))
    return root / "whisper", root / "clips"


def test_plain_prompt_transcribes_as_transformers_whisper_generate(released_whisper, tmp_path, capsys):
    """style='none' on an unmodified HF Whisper = `generate(language="en", task="transcribe")`, beams and the
    checkpoint's suppress lists (begin_suppress at the first generated token) included."""
    import torch
    import transformers

    hf_dir, folder = released_whisper
    torch_model = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    tokenizer = text.Tokenizer.from_assets()
    predict.predict(str(hf_dir), folder, tmp_path / "out.csv", _config(style="none", num_beams=3))
    ours = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())

    files = sorted(folder.iterdir())
    mel = audio.log_mel(np.stack([audio.pad_or_trim(audio.load_audio(f)) for f in files]), n_mels=80)[
        ..., :200
    ]
    with torch.no_grad():  # Whisper's generate returns the generated tokens only; 16 = our max_length 20 - 4
        generated = torch_model.generate(
            torch.from_numpy(mel), language="en", task="transcribe", num_beams=3, max_new_tokens=16
        )
    prompt = list(tokenizer.specials.decoder_prompt)
    expected = {
        f.name: tokenizer.decode_with_specials(prompt + ids)
        for f, ids in zip(files, generated.tolist(), strict=True)
    }
    assert ours == expected


def test_plugin_reranker_is_called_per_batch_and_its_choice_wins(released_whisper, tmp_path):
    PLUGIN_CALLS.clear()
    out = tmp_path / "out.csv"
    config = _config(num_beams=3, num_return_sequences=3, rerank=f"{__name__}:longest_caption")
    hf_dir, folder = released_whisper
    predict.predict(str(hf_dir), folder, out, config)  # 3 clips, one batch
    (call,) = PLUGIN_CALLS
    assert call == ((3, 80, 200), np.float32, [3, 3, 3], (3, 3))
    nbest = _read(tmp_path / "out_nbest.csv")
    for name, caption in caption_files.read_predictions_csv(out).items():
        rows = [r for r in nbest if r["file_name"] == name]
        assert rows[0]["caption"] == caption and len(caption) == max(len(r["caption"]) for r in rows)
        assert [float(r["score"]) for r in rows] == sorted(
            (float(len(r["caption"])) for r in rows), reverse=True
        )


def test_sampling_seed_fixes_the_captions_and_another_seed_changes_them(released_whisper):
    """caption_batches draws clip c with fold_in(key(seed), hash(c)): the same seed twice gives the same N-best
    lists, another seed others (one compiled search: the keys are an argument)."""
    hf_dir, folder = released_whisper
    config = _config(
        strategy="sample", num_samples=4, num_return_sequences=4, temperature=1.5, rerank="likelihood"
    )
    mesh = sharding.make_mesh(dict(config.mesh))
    built = load.build_model(
        load.ModelInit.from_path(str(hf_dir), config.step, dtype=config.dtype), mesh=mesh
    )
    tokenizer = built.tokenizer
    work = worklist.read_work_list(str(folder))
    batching = worklist.Batching(
        8, 80, built.config.num_frames, tuple(tokenizer.prompt_ids(text.CLOTHO_CAPTION))
    )
    batches = [
        part.batch for part in worklist.audio_parts(work, [range(len(work))], batching, 0) if part.batch
    ]
    decoder = inference.Decoder.from_config(config, built.model, tokenizer, hf_dir, mesh)
    assert (decoder.settings.num_samples, decoder.settings.num_return_sequences) == (4, 4)

    def run(settings):
        found = dataclasses.replace(decoder, settings=settings).caption(
            nnx.state(built.model), batches, tokenizer, mesh
        )
        for p in found:  # likelihood order: scores descending, the chosen caption first
            assert [c.score for c in p.candidates] == sorted((c.score for c in p.candidates), reverse=True)
            assert p.caption == p.candidates[0].caption
        return [(p.file_name, [c.caption for c in p.candidates]) for p in found]

    first = run(decoder.settings)
    assert len(first) == 3 and all(len(captions) == 4 for _, captions in first)
    assert run(decoder.settings) == first
    assert run(dataclasses.replace(decoder.settings, seed=1)) != first


def test_the_decoding_sweep_file_passes_preflight():
    configs = evaluate.sweep_configs(_config(), str(REPO / "configs" / "sweeps" / "decoding.py"), 1)
    assert list(configs) == ["beam1", "beam10", "beam5", "diverse10x5", "sample16_mbr"]
    sample = configs["sample16_mbr"]
    assert (sample.strategy, sample.num_samples, sample.temperature, sample.top_p) == (
        "sample",
        16,
        0.5,
        0.95,
    )
    assert (sample.no_repeat_ngram_size, sample.rerank) == (3, "mbr")


def test_sweep_decodes_every_setting_once_and_writes_one_row_each(released_whisper, tfds_build, tmp_path):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict(dict(\n"
        "        greedy=ml_collections.ConfigDict(dict(num_beams=1)),\n"
        "        beam2_mbr=ml_collections.ConfigDict(dict(num_beams=2, num_return_sequences=2, rerank='mbr')),\n"
        "    ))\n"
    )
    base = _config()
    configs = evaluate.sweep_configs(base, str(sweep_file), 1)
    assert list(configs) == ["beam2_mbr", "greedy"] and configs["beam2_mbr"].rerank == "mbr"  # sorted names
    assert base.rerank == "none"  # the base config is not changed
    hf_dir, _ = released_whisper  # 200 mel frames: the TFDS clips' first 2 s
    data_dir = str(tfds_build["clotho"].data_dir)
    loaded = evaluate.load_split(
        str(hf_dir), "clotho", "validation", data_dir, base, style="none", in_memory=True
    )
    assert loaded.prefix == "" and loaded.batches[0]["decoder_prompt"][0].tolist() == [
        50258,
        50259,
        50359,
        50363,
    ]
    seen = []

    def score(captions, references, candidates):
        """A stand-in for the JVM metrics (`evaluate` passes its flags' `scoring.ScoreOptions`; tested above):
        what it got."""
        seen.append(candidates)
        return scorecard.CaptionScores(
            corpus={"cider_d": float(len(captions)), "spice": None}, per_clip={}, unavailable={}, warnings=[]
        )

    rows = evaluate.run_sweep(loaded, configs, tmp_path, score)
    assert [r["setting"] for r in rows] == ["beam2_mbr", "greedy"]
    assert [(r["cider_d"], r["spice"]) for r in rows] == [(2.0, None), (2.0, None)]  # the 2 decodable clips
    assert all(r["seconds"] > 0 for r in rows)
    assert [None if c is None else [len(v) for v in c.values()] for c in seen] == [[2, 2], None]
    written = _read(tmp_path / "sweep.csv")
    assert [(r["setting"], r["cider_d"], r["spice"]) for r in written] == [
        ("beam2_mbr", "2.0", ""),
        ("greedy", "2.0", ""),
    ]
    assert {"clotho_greedy_predictions.csv", "clotho_beam2_mbr_predictions_nbest.csv"} <= {
        p.name for p in tmp_path.iterdir()
    }
    table = evaluate.format_sweep_table(rows).splitlines()
    assert table[0] == "| setting | CIDEr-D | SPICE | seconds |"
    assert table[2].startswith("| beam2_mbr | 2.0000 | n/a | ")


@pytest.mark.parametrize(
    "body, problem",
    [
        ("dict(a=ml_collections.ConfigDict(dict(beams=3)))", ": a.beams: no such key in configs/predict.py"),
        (
            "dict(a=ml_collections.ConfigDict(dict(batch_size=3)))",
            ": a.batch_size: the sweep loads the model",
        ),
        ("dict(a=ml_collections.ConfigDict(dict(top_p=2.0, strategy='sample')))", ": a.top_p 2.0 must be in"),
        ("dict(a=3)", ": a is a int, not a ConfigDict"),
        ("dict()", "without settings"),
    ],
)
def test_bad_sweep_files_name_the_setting_and_key(tmp_path, body, problem):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(
        f"import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({body})\n"
    )
    with pytest.raises(cli.UserError) as error:
        evaluate.sweep_configs(_config(), str(sweep_file), 1)
    assert str(sweep_file) in error.value.problem and problem in error.value.problem
