"""The model-based DCASE metrics: SBERT-sim, fluency errors (FER) and the fluency penalty of FENSE / SPIDEr-FL.

Numbers equal aac-metrics 0.5.5 (the organisers' reference; scripts/crosscheck_aac_metrics.sh): the same two
models, the same text preprocessing, batching and thresholds, run on sentence-transformers and transformers' BERT
(PyTorch, CPU). Optional extra: `pip install -e '.[dcase]'`. `scoring.score(..., preset="dcase2024")` calls this
module; nothing here knows about files of predictions or presets.

  SBERT-sim[b] = mean_r  cos(SBERT(candidate_b), SBERT(reference_b,r))   (paraphrase-TinyBERT-L6-v2, mean pooling)
  FER[b]       = 1[P(error | candidate_b) > 0.9]                        (echecker_clotho_audiocaps_base)
  FENSE[b]     = SBERT-sim[b] * (1 - 0.9 * FER[b]);  SPIDEr-FL[b] = SPIDEr[b] * (1 - 0.9 * FER[b])
  corpus value = mean over clips b (B clips, R_b references each).

The two models live in one directory (`--metrics_model_dir`, else $AUDIOCAP_METRICS_MODELS, else
~/.cache/audiocap_jax/metric_models), laid out as `download_models` writes it:

  paraphrase-TinyBERT-L6-v2/              SentenceTransformer directory (hub: sentence-transformers/...)
  echecker_clotho_audiocaps_base.ckpt     torch.save({"model_type", "num_classes", "state_dict"}) (FENSE release)
  <model_type>/                           BERT config.json + tokenizer of the detector (bert-base-uncased)

`python -m audiocap_jax.metrics.dcase download [--model_dir=DIR]` fetches them and checks their SHA-256.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

MODEL_DIR_ENV = "AUDIOCAP_METRICS_MODELS"
SBERT_MODEL = "paraphrase-TinyBERT-L6-v2"
SBERT_REPO = "sentence-transformers/paraphrase-TinyBERT-L6-v2"
ECHECKER = "echecker_clotho_audiocaps_base"
ECHECKER_FILE = f"{ECHECKER}.ckpt"
ECHECKER_URL = (
    "https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_base.ckpt"
)
# The hash aac-metrics 0.5.5 checks for the same release file.
ECHECKER_SHA256 = "1a719f090af70614bbdb9f9437530b7e133c48cfa4a58d964de0d47fc974a2fa"
ERROR_THRESHOLD = 0.9  # a candidate is disfluent when P(error) exceeds this
PENALTY = 0.9  # FENSE and SPIDEr-FL keep 1 - 0.9 = 10% of a disfluent candidate's score
DOWNLOAD_COMMAND = "python -m audiocap_jax.metrics.dcase download"
INSTALL_COMMAND = "pip install -e '.[dcase]'"
_BATCH_SIZE = 32  # aac-metrics' batch size, for both models
_ECHECKER_MAX_LENGTH = 64  # the detector pads/truncates every candidate to 64 tokens
# Only what SentenceTransformer and a BERT tokenizer read; the hub repos also hold TF/ONNX/OpenVINO copies.
# The detector's BERT needs no weights from the hub: its checkpoint holds them all.
_CONFIG_PATTERNS = ("*.json", "*.txt")
_SBERT_PATTERNS = (*_CONFIG_PATTERNS, "*.safetensors")
_CHECKSUMS = "SHA256SUMS"


def default_model_dir() -> Path:
    """$AUDIOCAP_METRICS_MODELS, else $XDG_CACHE_HOME (or ~/.cache)/audiocap_jax/metric_models."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "audiocap_jax" / "metric_models"


def resolve_model_dir(model_dir: str | Path | None) -> Path:
    return Path(model_dir).expanduser() if model_dir else default_model_dir()


def unavailable_reason(model_dir: str | Path | None = None) -> str | None:
    """None when the models can load; otherwise one line naming what is missing and ending with the fix.

    Checks only that packages and files exist (no hashing, no network): a metric run must never download.
    """
    missing_packages = [p for p in ("torch", "sentence_transformers") if importlib.util.find_spec(p) is None]
    if missing_packages:
        return f"needs the python packages {', '.join(missing_packages)}; fix: {INSTALL_COMMAND}"
    model_dir = resolve_model_dir(model_dir)
    absent = missing_models(model_dir)
    if absent:
        return f"missing {', '.join(map(str, absent))}; fix: {DOWNLOAD_COMMAND} --model_dir={model_dir}"
    return None


def missing_models(model_dir: Path) -> list[Path]:
    """The files of the two models that are not in `model_dir` (existence only, no hashing)."""
    return [
        p for p in (model_dir / SBERT_MODEL / "modules.json", model_dir / ECHECKER_FILE) if not p.is_file()
    ]


# ----------------------------------------------------------------------------------------------------------
# Models (PyTorch, CPU).
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricModels:
    sbert: Any  # sentence_transformers.SentenceTransformer
    echecker: Any  # torch.nn.Module: BERT encoder + linear heads, logits [B, 6]
    echecker_tokenizer: Any  # transformers tokenizer of the detector's model_type


def _make_echecker(encoder_dir: Path, num_classes: int) -> Any:
    """aac-metrics' BERTFlatClassifier: BERT, [CLS] hidden state, dropout (off in eval), Linear -> logits."""
    import torch
    import transformers

    class ErrorDetector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = transformers.AutoConfig.from_pretrained(encoder_dir)
            self.encoder = transformers.AutoModel.from_config(config)
            self.clf = torch.nn.Linear(config.hidden_size, num_classes)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            return self.clf(hidden[:, 0, :])

    return ErrorDetector()


@functools.cache
def _load_models_cached(model_dir: Path) -> MetricModels:
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # quiet by default: no per-load weight bars
    checkpoint = torch.load(model_dir / ECHECKER_FILE, map_location="cpu", weights_only=True)
    model_type = checkpoint["model_type"]
    encoder_dir = Path(model_type) if Path(model_type).is_absolute() else model_dir / model_type
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir / ECHECKER_FILE} needs its BERT config and tokenizer in {encoder_dir}; "
            f"fix: {DOWNLOAD_COMMAND} --model_dir={model_dir}"
        )
    echecker = _make_echecker(encoder_dir, checkpoint["num_classes"])
    state_dict = dict(checkpoint["state_dict"])
    # Checkpoints saved by transformers < 4.31 hold these buffers; newer BERTs rebuild them.
    for buffer in ("encoder.embeddings.position_ids", "encoder.embeddings.token_type_ids"):
        if buffer not in echecker.state_dict():
            state_dict.pop(buffer, None)
    echecker.load_state_dict(state_dict)
    echecker.eval()
    sbert = SentenceTransformer(str(model_dir / SBERT_MODEL), device="cpu", local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
    return MetricModels(sbert, echecker, tokenizer)


def load_models(model_dir: str | Path | None = None) -> MetricModels:
    """Loads (once per directory and process) both models; raises FileNotFoundError with the fix if absent."""
    reason = unavailable_reason(model_dir)
    if reason is not None:
        raise FileNotFoundError(reason)
    return _load_models_cached(resolve_model_dir(model_dir).resolve())


# ----------------------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------------------


def sbert_similarity(
    models: MetricModels, candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> np.ndarray:
    """Per clip: mean cosine similarity of the candidate's SBERT embedding to each reference's. [B] float64."""
    import torch

    flat_references = [r for refs in references for r in refs]
    with torch.no_grad():
        encode = functools.partial(
            models.sbert.encode,
            convert_to_tensor=True,
            normalize_embeddings=True,
            batch_size=_BATCH_SIZE,
            show_progress_bar=False,
        )
        candidate_embeddings, reference_embeddings = encode(list(candidates)), encode(flat_references)
    starts = np.cumsum([0] + [len(refs) for refs in references])
    # Same op order as aac-metrics (float32 dot products, mean, then .item()) so the values match to the bit.
    return np.array(
        [
            (candidate_embeddings[i] @ reference_embeddings[starts[i] : starts[i + 1]].T).mean().item()
            for i in range(len(candidates))
        ]
    )


def error_probabilities(models: MetricModels, candidates: Sequence[str]) -> np.ndarray:
    """P(error) per candidate from the detector's last head (sigmoid), on lowercased text without punctuation. [B]"""
    import torch

    texts = [re.sub(r"[^\w\s]", "", c).lower() for c in candidates]
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(texts), _BATCH_SIZE):
            batch = models.echecker_tokenizer(
                texts[start : start + _BATCH_SIZE],
                truncation=True,
                padding="max_length",
                max_length=_ECHECKER_MAX_LENGTH,
                return_tensors="pt",
            )
            logits = models.echecker(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            probabilities.append(logits.sigmoid()[:, -1].numpy())  # heads: 5 error types, then "error"
    return np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32)


def fluency_errors(probabilities: np.ndarray, threshold: float = ERROR_THRESHOLD) -> np.ndarray:
    """1.0 for a disfluent candidate (P(error) > threshold), else 0.0; FER is their mean. [B] float64"""
    return (np.asarray(probabilities) > threshold).astype(np.float64)


def fluency_penalized(
    scores: Sequence[float], errors: Sequence[float], penalty: float = PENALTY
) -> np.ndarray:
    """score * (1 - penalty * error) per clip: FENSE from SBERT-sim, SPIDEr-FL from SPIDEr. [B] float64"""
    return np.asarray(scores, dtype=np.float64) * (1.0 - penalty * np.asarray(errors, dtype=np.float64))


# ----------------------------------------------------------------------------------------------------------
# Download (the only code here that touches the network).
# ----------------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raises ValueError naming the file and both hashes when they differ (a truncated or altered file)."""
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"{path}: SHA-256 {actual} differs from the expected {expected}; delete it and run "
            f"{DOWNLOAD_COMMAND} again"
        )


def _download_hub_repo(repo_id: str, target: Path, patterns: Sequence[str]) -> dict[str, str]:
    """Snapshot of `repo_id` (config, tokenizer, safetensors) into `target`; checks each weight file's SHA-256
    against the hash the hub publishes for it. Returns {relative path: sha256}."""
    from huggingface_hub import HfApi, snapshot_download

    snapshot_download(repo_id, local_dir=target, allow_patterns=list(patterns))
    published = {
        s.rfilename: s.lfs.sha256
        for s in HfApi().model_info(repo_id, files_metadata=True).siblings or []
        if s.lfs is not None
    }
    hashes = {}
    for path in sorted(p for p in target.rglob("*") if p.is_file() and ".cache" not in p.parts):
        relative = path.relative_to(target).as_posix()
        if relative in published:
            check_sha256(path, published[relative])
        hashes[relative] = sha256_of(path)
    return hashes


def download_models(model_dir: str | Path | None = None) -> Path:
    """Fetches the error detector (pinned SHA-256), its BERT config/tokenizer and the SBERT model; writes
    SHA256SUMS. Files land in a scratch dir first, so a failure leaves an existing model dir as it was."""
    import torch

    model_dir = resolve_model_dir(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="audiocap_metric_models_", dir=model_dir) as tmp:
        scratch = Path(tmp)
        logging.info("downloading %s", ECHECKER_URL)
        urllib.request.urlretrieve(ECHECKER_URL, scratch / ECHECKER_FILE)
        check_sha256(scratch / ECHECKER_FILE, ECHECKER_SHA256)
        model_type = torch.load(scratch / ECHECKER_FILE, map_location="cpu", weights_only=True)["model_type"]
        hashes = {ECHECKER_FILE: ECHECKER_SHA256}
        for repo_id, name, patterns in (
            (model_type, model_type, _CONFIG_PATTERNS),
            (SBERT_REPO, SBERT_MODEL, _SBERT_PATTERNS),
        ):
            logging.info("downloading %s from the Hugging Face hub", repo_id)
            repo_hashes = _download_hub_repo(repo_id, scratch / name, patterns)
            hashes.update({f"{name}/{k}": v for k, v in repo_hashes.items()})
        for name in (ECHECKER_FILE, model_type, SBERT_MODEL):
            shutil.rmtree(model_dir / name, ignore_errors=True)
            (model_dir / name).unlink(missing_ok=True)
            (model_dir / name).parent.mkdir(parents=True, exist_ok=True)  # hub ids may hold a "/"
            (scratch / name).rename(model_dir / name)
    (model_dir / _CHECKSUMS).write_text("".join(f"{h}  {p}\n" for p, h in sorted(hashes.items())))
    return model_dir


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from audiocap_jax import cli

    if list(argv[1:]) != ["download"]:
        raise cli.UserError(
            f"the only command is `download`; got {list(argv[1:]) or 'none'}.",
            f"run {DOWNLOAD_COMMAND} [--model_dir=DIR] (--help lists the flags)",
        )
    model_dir = download_models(flags.FLAGS.model_dir)
    print(f"FENSE / SBERT-sim / FER / SPIDEr-FL models ready in {model_dir}")


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model_dir", None, f"Model directory (default: ${MODEL_DIR_ENV} or ~/.cache/...).")


if __name__ == "__main__":
    from audiocap_jax import cli

    cli.run(main, define_flags=_define_flags)
