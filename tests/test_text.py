"""Tokenizer, special ids, prefixes and training targets: ids equal the original system's (literals)."""

import pickle

import numpy as np
import pytest
import transformers

from audiocap_jax import text

CLOTHO_IDS = [3474, 900, 78, 12331, 31974, 25, 220]
AUDIOCAPS_IDS = [46069, 496, 1878, 12331, 31974, 25, 220]
AUDIOSET_IDS = [3751, 2717, 302, 12331, 21009, 25, 220]
DECODER_PROMPT = [50258, 50259, 50359, 50363]  # SOT, <|en|>, <|transcribe|>, <|notimestamps|>
RAIN_FALLS = [49, 491, 8804]  # "Rain falls": no leading-space token
TRICKY = [
    "Café — rain, 'drips' on the roof; birds chirp!? 雨",
    "DON'T stop  it\n\n 12345 3.14 🙂 tab\there   ",
    " leading space, trailing space ",
    "a dog's bark; it's loud... (really) -- [sic] {x} 50% $3 #1 @home",
    "Ünïcödé ß ø 日本語の音 한국어 العربية",
]


@pytest.fixture(scope="module")
def tok() -> text.Tokenizer:
    return text.Tokenizer.from_assets()


@pytest.fixture(scope="module")
def hf_dir(tok, tmp_path_factory):
    directory = tmp_path_factory.mktemp("whisper_tokenizer")
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_tok(hf_dir) -> text.Tokenizer:
    return text.Tokenizer.from_pretrained(hf_dir)


# ----- prefixes --------------------------------------------------------------------------------------------


def test_prefix_strings():
    assert text.CLOTHO_CAPTION == "clotho > caption: "
    assert text.AUDIOCAPS_CAPTION == "audiocaps > caption: "
    assert text.AUDIOSET_KEYWORDS == "audioset > keywords: "
    assert text.make_prefix("freesound", "tags") == "freesound > tags: "
    assert text.DATASETS == ("clotho", "audiocaps", "audioset")
    assert text.DEFAULT_PREFIXES["audioset"] == "audioset > keywords: "


@pytest.mark.parametrize(
    "dataset, task", [("", "caption"), ("clotho", "a:b"), ("a>b", "caption"), (" x", "y")]
)
def test_make_prefix_rejects_unsplittable_names(dataset, task):
    with pytest.raises(ValueError, match="cannot go into a prefix"):
        text.make_prefix(dataset, task)


@pytest.mark.parametrize(
    "style, prefix",
    [
        ("clotho > caption", "clotho > caption: "),
        ("clotho > caption: ", "clotho > caption: "),
        ("clotho>caption:", "clotho > caption: "),
        ("  audioset >  keywords ", "audioset > keywords: "),
        ("wavcaps > long caption", "wavcaps > long caption: "),
        ("none", ""),
        (" none ", ""),
        ("", ""),
    ],
)
def test_parse_style(style, prefix):
    assert text.parse_style(style) == prefix


@pytest.mark.parametrize("style", ["clotho", "a > b > c", " > caption", "clotho > ", "none >"])
def test_parse_style_rejects_malformed(style):
    with pytest.raises(ValueError, match="<dataset> > <task>"):
        text.parse_style(style)


def test_plain_style_prompt_is_only_the_special_tokens(tok):
    assert tok.prompt_ids(text.parse_style("none")) == DECODER_PROMPT


def test_split_prefixed_text():
    assert text.split_prefixed_text("clotho > caption: A dog barks.") == ("clotho > caption", "A dog barks.")
    assert text.split_prefixed_text(" audioset > keywords: speech: male ") == (
        "audioset > keywords",
        "speech: male",
    )
    assert text.split_prefixed_text("no prefix here ") == ("", "no prefix here")


# ----- ids -------------------------------------------------------------------------------------------------


def test_prefix_ids(tok):
    assert tok.encode(text.CLOTHO_CAPTION) == CLOTHO_IDS
    assert tok.encode(text.AUDIOCAPS_CAPTION) == AUDIOCAPS_IDS
    assert tok.encode(text.AUDIOSET_KEYWORDS) == AUDIOSET_IDS
    assert tok.encode("Rain falls") == RAIN_FALLS


def test_special_ids_v2(tok):
    s = tok.specials
    assert (s.eot, s.sot, s.en, s.translate, s.transcribe) == (50257, 50258, 50259, 50358, 50359)
    assert (s.startoflm, s.startofprev, s.nospeech, s.notimestamps, s.timestamp_begin) == (
        50360,
        50361,
        50362,
        50363,
        50364,
    )
    assert s.num_languages == 99 and s.language("su") == 50357 and s.language("zh") == 50260
    assert tok.vocab_size == 51865
    with pytest.raises(ValueError, match="unknown language 'yue'"):
        s.language("yue")


def test_special_ids_v3():
    tok3 = text.Tokenizer.from_assets(100)
    s = tok3.specials
    assert (s.eot, s.sot, s.en, s.language("yue"), s.translate, s.transcribe) == (
        50257,
        50258,
        50259,
        50358,
        50359,
        50360,
    )
    assert (s.nospeech, s.notimestamps, s.timestamp_begin) == (50363, 50364, 50365)
    assert tok3.vocab_size == 51866
    assert tok3.prompt_ids(text.CLOTHO_CAPTION) == [50258, 50259, 50360, 50364, *CLOTHO_IDS]


def test_vocab_size_to_languages():
    assert text.num_languages_for_vocab_size(51865) == 99
    assert text.num_languages_for_vocab_size(51866) == 100
    with pytest.raises(ValueError, match="51864 is not a multilingual Whisper vocabulary"):
        text.num_languages_for_vocab_size(51864)
    with pytest.raises(ValueError, match="num_languages=98"):
        text.Tokenizer.from_assets(98)


def test_prompt_ids(tok):
    assert tok.prompt_ids(text.CLOTHO_CAPTION) == DECODER_PROMPT + CLOTHO_IDS
    assert tok.prompt_ids(text.AUDIOCAPS_CAPTION) == DECODER_PROMPT + AUDIOCAPS_IDS
    assert tok.prompt_ids(text.AUDIOSET_KEYWORDS) == DECODER_PROMPT + AUDIOSET_IDS
    assert list(tok.specials.decoder_prompt) == DECODER_PROMPT


def test_encode_refuses_special_token_text(tok):
    with pytest.raises(ValueError, match="special token <\\|endoftext\\|>"):
        tok.encode("rain <|endoftext|>")
    assert tok.encode("<|not a token|>") == [27, 91, 2247, 257, 14862, 91, 29]


# ----- training targets ------------------------------------------------------------------------------------


def test_encode_target_fits(tok):
    row = tok.encode_target(text.CLOTHO_CAPTION, "Rain falls", max_length=16)
    np.testing.assert_array_equal(
        row["decoder_input_ids"],
        [50258, 50259, 50359, 50363, 3474, 900, 78, 12331, 31974, 25, 220, 49, 491, 8804, 50257],
    )
    np.testing.assert_array_equal(
        row["targets"],
        [50259, 50359, 50363, 3474, 900, 78, 12331, 31974, 25, 220, 49, 491, 8804, 50257, 50257],
    )
    np.testing.assert_array_equal(row["loss_mask"], [0] * 10 + [1, 1, 1, 1] + [0])
    assert row["decoder_input_ids"].dtype == np.int32 and row["targets"].dtype == np.int32
    assert row["loss_mask"].dtype == np.float32
    assert {k: v.shape for k, v in row.items()} == {
        k: (15,) for k in ("decoder_input_ids", "targets", "loss_mask")
    }


def test_encode_target_train_prompt(tok):
    row = tok.encode_target(text.CLOTHO_CAPTION, "Rain falls", max_length=16, train_prompt=True)
    np.testing.assert_array_equal(row["loss_mask"], [1] * 14 + [0])


def test_encode_target_truncates_caption_keeps_eot(tok):
    row = tok.encode_target(text.CLOTHO_CAPTION, "Rain falls", max_length=13)
    np.testing.assert_array_equal(row["decoder_input_ids"], DECODER_PROMPT + CLOTHO_IDS + [49])
    np.testing.assert_array_equal(row["targets"], DECODER_PROMPT[1:] + CLOTHO_IDS + [49, 50257])
    np.testing.assert_array_equal(row["loss_mask"], [0] * 10 + [1, 1])

    row = tok.encode_target(text.CLOTHO_CAPTION, "Rain falls", max_length=12)
    np.testing.assert_array_equal(row["targets"], DECODER_PROMPT[1:] + CLOTHO_IDS + [50257])
    np.testing.assert_array_equal(row["loss_mask"], [0] * 10 + [1])

    with pytest.raises(ValueError, match="max_length=11 leaves no room for eot .* use max_length >= 12"):
        tok.encode_target(text.CLOTHO_CAPTION, "Rain falls", max_length=11)


def test_encode_target_prefixes_of_different_length(tok):
    short = text.make_prefix("macs", "caption")  # 6 tokens
    long = text.make_prefix("wavcaps", "long caption")  # 9 tokens
    assert tok.encode(short) == [37065, 82, 12331, 31974, 25, 220]
    assert tok.encode(long) == [86, 706, 496, 1878, 12331, 938, 31974, 25, 220]
    rows = [tok.encode_target(p, "Rain falls", max_length=20) for p in (short, long)]
    for row, prompt_length in zip(rows, (10, 13), strict=True):
        assert row["decoder_input_ids"].shape == row["targets"].shape == row["loss_mask"].shape == (19,)
        # Trained targets: the 3 caption tokens and eot, right after the prompt.
        np.testing.assert_array_equal(np.flatnonzero(row["loss_mask"]), np.arange(4) + prompt_length - 1)
        np.testing.assert_array_equal(
            row["targets"][prompt_length - 1 : prompt_length + 3], RAIN_FALLS + [50257]
        )
        assert row["decoder_input_ids"][prompt_length - 1] == 220


# ----- decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption", TRICKY)
def test_caption_round_trip_is_lossless(tok, caption):
    assert tok.decode(tok.encode(caption)) == caption


def test_decode_skips_specials_and_timestamps(tok):
    assert tok.decode([50258, 49, 491, 50364, 8804, 50257]) == "Rain falls"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([49, 51865])


def test_caption_from_ids(tok):
    prompt = tok.prompt_ids(text.CLOTHO_CAPTION)
    generated = np.array([*prompt, 49, 491, 8804, 13, 50257, 220, 49, 50257, 50257], dtype=np.int32)
    assert tok.caption_from_ids(generated, prompt_length=len(prompt)) == "Rain falls."
    # No eot (max_length reached): everything after the prompt; leading/trailing spaces stripped.
    assert tok.caption_from_ids([*prompt, 220, 49, 491, 220], prompt_length=len(prompt)) == "Rain"
    # Prompt not dropped (length 4 = specials only): the prefix text stays; specials never show.
    assert tok.caption_from_ids(generated, prompt_length=4) == "clotho > caption: Rain falls."
    with pytest.raises(ValueError, match="one sequence"):
        tok.caption_from_ids(generated[None], prompt_length=11)


# ----- HF backend and export -------------------------------------------------------------------------------


def test_save_pretrained_gives_identical_ids(tok, hf_tok):
    assert hf_tok.specials == tok.specials
    assert hf_tok.vocab_size == tok.vocab_size == 51865
    for string in [text.CLOTHO_CAPTION, text.AUDIOCAPS_CAPTION, text.AUDIOSET_KEYWORDS, *TRICKY]:
        assert hf_tok.encode(string) == tok.encode(string), string
        assert hf_tok.decode(tok.encode(string)) == string
    row, hf_row = (t.encode_target(text.AUDIOSET_KEYWORDS, TRICKY[0], 24) for t in (tok, hf_tok))
    for key in row:
        np.testing.assert_array_equal(hf_row[key], row[key])


def test_exported_files_load_in_transformers(hf_dir):
    hf = transformers.WhisperTokenizer.from_pretrained(
        str(hf_dir), language="en", task="transcribe", local_files_only=True
    )
    assert hf.prefix_tokens == DECODER_PROMPT  # the original's "fluff"
    assert hf.encode(text.CLOTHO_CAPTION, add_special_tokens=False) == CLOTHO_IDS
    assert hf.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50364, 51864]
    assert len(hf) == 51865


def test_save_pretrained_v3(tmp_path):
    text.Tokenizer.from_assets(100).save_pretrained(tmp_path)
    hf_tok3 = text.Tokenizer.from_pretrained(tmp_path)
    assert hf_tok3.specials == text.Tokenizer.from_assets(100).specials
    assert hf_tok3.vocab_size == 51866
    assert hf_tok3.prompt_ids(text.CLOTHO_CAPTION) == [50258, 50259, 50360, 50364, *CLOTHO_IDS]


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text.Tokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json or vocab.json"):
        text.Tokenizer.from_pretrained(tmp_path)


def test_pickle_round_trip(tok, hf_tok):
    assert pickle.loads(pickle.dumps(tok)) is tok  # rebuilt from the cache, not copied
    restored = pickle.loads(pickle.dumps(hf_tok))
    assert restored.encode(TRICKY[0]) == tok.encode(TRICKY[0])
    assert restored.specials == tok.specials


def test_special_tokens_checks_whisper_layout():
    vocab = {name: 50257 + i for i, name in enumerate(text.special_token_names(99))}
    assert text.SpecialTokens.from_vocab(vocab, "ok").notimestamps == 50363
    with pytest.raises(ValueError, match="no <\\|0.00\\|> token, so it is not a complete Whisper tokenizer"):
        text.SpecialTokens.from_vocab({k: v for k, v in vocab.items() if v < 50364}, "old")
    with pytest.raises(ValueError, match="language tokens must be Whisper's"):
        text.SpecialTokens.from_vocab({k: v for k, v in vocab.items() if k != "<|zh|>"}, "gap")
    shifted = {**vocab, "<|translate|>": 50300}
    with pytest.raises(
        ValueError, match=r"are \(50258, 50300, 50364\); Whisper's are \(50258, 50358, 50364\)"
    ):
        text.SpecialTokens.from_vocab(shifted, "shifted")


def test_decode_with_specials_keeps_prompt_and_stops_after_eot():
    tok = text.Tokenizer.from_assets()
    ids = [
        *tok.prompt_ids(text.CLOTHO_CAPTION),
        *tok.encode("Rain falls."),
        tok.specials.eot,
        tok.specials.eot,
    ]
    assert (
        tok.decode_with_specials(ids)
        == "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>clotho > caption: Rain falls.<|endoftext|>"
    )
