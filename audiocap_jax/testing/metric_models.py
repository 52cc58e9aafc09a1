"""Tiny randomly initialised stand-ins for the two DCASE metric models, in the exact formats of the real ones.

`make_tiny_metric_models(root)` writes into `root` what `dcase.download_models` would:

    root/paraphrase-TinyBERT-L6-v2/           a SentenceTransformer directory (BERT + mean pooling), like the hub's
    root/echecker_clotho_audiocaps_base.ckpt  torch.save({"model_type", "num_classes", "state_dict"}), the FENSE
                                              error detector's format that aac-metrics 0.5.5 loads
    root/tiny-bert-uncased/                   the detector's `model_type`: BERT config.json + tokenizer files

The weights come from numpy's seeded generator (not torch's initialisers), so the files, and the numbers pinned
from them in tests/test_dcase_metrics.py, are the same on every machine and in the aac-metrics throwaway venv
(scripts/crosscheck_aac_metrics.sh builds them with this module). Needs torch and transformers (the test extra).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np

ECHECKER_MODEL_TYPE = "tiny-bert-uncased"
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Whole words seen in the test captions, then single letters and `##` letters so any word still tokenises.
_WORDS = [
    "a",
    "the",
    "and",
    "is",
    "are",
    "in",
    "on",
    "of",
    "at",
    "while",
    "with",
    "dog",
    "dogs",
    "bark",
    "barks",
    "barking",
    "rain",
    "falls",
    "roof",
    "water",
    "birds",
    "bird",
    "chirp",
    "chirping",
    "sing",
    "people",
    "talk",
    "car",
    "engine",
    "man",
    "woman",
    "speaks",
    "loudly",
    "quietly",
    "door",
    "wind",
    "blows",
    "music",
    "plays",
]
_VOCAB = _SPECIALS + _WORDS + list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
_ARCH = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    type_vocab_size=2,
)
NUM_ERROR_CLASSES = 6  # add_tail, repeat_event, repeat_adv, remove_conj, remove_verb, error


def _random_bert(seed: int, scale: float):  # -> transformers.BertModel
    import torch
    import transformers

    config = transformers.BertConfig(vocab_size=len(_VOCAB), **_ARCH)
    model = transformers.BertModel(config).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if tensor.is_floating_point():
                values = rng.normal(0.0, scale, size=tuple(tensor.shape))
                if name.endswith("LayerNorm.weight"):
                    values += 1.0
                tensor.copy_(torch.from_numpy(values.astype(np.float32)))
    return model


def _save_bert_dir(model, directory: Path) -> None:
    """config.json + model.safetensors + tokenizer files, loadable by transformers 4.x and 5.x."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(directory)
    tokenizer = transformers.BertTokenizer(vocab={token: i for i, token in enumerate(_VOCAB)})
    tokenizer.save_pretrained(directory)


def make_tiny_metric_models(root: str | Path) -> Path:
    """Writes the tiny SBERT and error-detector stand-ins into `root` (see the module docstring); returns root."""
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    sbert_dir = root / "paraphrase-TinyBERT-L6-v2"
    _save_bert_dir(_random_bert(seed=0, scale=0.2), sbert_dir)
    (sbert_dir / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ],
            indent=2,
        )
    )
    (sbert_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )
    (sbert_dir / "1_Pooling").mkdir(exist_ok=True)
    (sbert_dir / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": _ARCH["hidden_size"],
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )

    encoder = _random_bert(seed=1, scale=0.5)
    _save_bert_dir(encoder, root / ECHECKER_MODEL_TYPE)
    rng = np.random.default_rng(2)
    state_dict = {f"encoder.{k}": v.clone() for k, v in encoder.state_dict().items()}
    # transformers < 4.31 kept this buffer in the state dict, so the released checkpoint has it and
    # aac-metrics pops it before loading.
    state_dict["encoder.embeddings.position_ids"] = torch.arange(_ARCH["max_position_embeddings"])[None]
    state_dict["clf.weight"] = torch.from_numpy(
        rng.normal(0.0, 1.0, size=(NUM_ERROR_CLASSES, _ARCH["hidden_size"])).astype(np.float32)
    )
    # The last class is "error"; its bias puts P(error) around the 0.9 threshold so both sides occur.
    state_dict["clf.bias"] = torch.from_numpy(
        np.array([2.0] * (NUM_ERROR_CLASSES - 1) + [8.0], dtype=np.float32)
    )
    torch.save(
        {"model_type": ECHECKER_MODEL_TYPE, "num_classes": NUM_ERROR_CLASSES, "state_dict": state_dict},
        root / "echecker_clotho_audiocaps_base.ckpt",
    )
    return root


# The inputs tests/test_dcase_metrics.py and scripts/crosscheck_aac_metrics.sh score with both implementations:
# case, punctuation (removed by the PTB step), repeated words (what the error detector looks for), 1-5 references.
CROSSCHECK_REFERENCES = {
    "birds.wav": ["Birds chirp and sing in the morning.", "Several birds are chirping; wind blows."],
    "car.wav": ["A car engine runs while a man speaks.", "An engine idles.", "A man talks near a car."],
    "dog.wav": ["A dog is barking loudly.", "Dogs bark at the door!", "A dog barks while people talk."],
    "music.wav": ["Music plays and people talk.", "People talk while music plays quietly."],
    "rain.wav": [
        "Rain falls on the roof.",
        "Water falls; rain patters on a roof.",
        "Heavy rain.",
        "Rain.",
        "Wind.",
    ],
    "wind.wav": ["The wind blows."],
}
CROSSCHECK_PREDICTIONS = {
    "birds.wav": "Birds are chirping in the morning.",
    "car.wav": "a car car engine engine runs runs",
    "dog.wav": "A dog barks, and a dog barks!",
    "music.wav": "People talk while music plays.",
    "rain.wav": "Rain falls on a roof roof.",
    "wind.wav": "wind wind",
}
# Stand-in per-clip SPICE (SPICE cannot run offline), sorted file-name order; SPIDEr-FL is checked on
# SPIDEr = (CIDEr-D + these) / 2 on both sides.
CROSSCHECK_SPICE = (0.25, 0.05, 0.2, 0.3, 0.15, 0.1)

CROSSCHECK_KEYS = ("sbert_sim", "fer", "fense", "vocab", "cider_d", "spider_fl")


def crosscheck_ours(model_root: str | Path) -> dict[str, dict]:
    """Our side of the aac-metrics cross-check: `scoring.score(preset="dcase2024")` on the CROSSCHECK inputs
    with the stand-ins in `model_root`, plus SPIDEr-FL from CROSSCHECK_SPICE. {"corpus": {...}, "per_clip":
    {metric: [B]}} for CROSSCHECK_KEYS (Vocab has no per-clip list)."""
    from audiocap_jax.metrics import dcase, scoring

    options = scoring.ScoreOptions(preset="dcase2024", spice=False, model_dir=model_root)
    scores = scoring.score(CROSSCHECK_PREDICTIONS, CROSSCHECK_REFERENCES, options)
    names = sorted(CROSSCHECK_REFERENCES)
    per_clip = {k: [scores.per_clip[n][k] for n in names] for k in ("sbert_sim", "fer", "fense", "cider_d")}
    spider = (np.array(per_clip["cider_d"]) + np.array(CROSSCHECK_SPICE)) / 2
    per_clip["spider_fl"] = dcase.fluency_penalized(spider, per_clip["fer"]).tolist()
    corpus = {k: scores.corpus[k] for k in ("sbert_sim", "fer", "fense", "vocab", "cider_d")}
    corpus["spider_fl"] = float(np.mean(per_clip["spider_fl"]))
    return {"corpus": corpus, "per_clip": per_clip}


def write_crosscheck(work_dir: str | Path) -> None:
    """Writes the stand-in models, the inputs (inputs.json) and our numbers (ours.json) into `work_dir`."""
    work_dir = Path(work_dir)
    make_tiny_metric_models(work_dir / "models")
    names = sorted(CROSSCHECK_REFERENCES)
    inputs = {
        "candidates": [CROSSCHECK_PREDICTIONS[n] for n in names],
        "references": [CROSSCHECK_REFERENCES[n] for n in names],
        "spice": list(CROSSCHECK_SPICE),
    }
    (work_dir / "inputs.json").write_text(json.dumps(inputs, indent=1))
    (work_dir / "ours.json").write_text(json.dumps(crosscheck_ours(work_dir / "models"), indent=1))
