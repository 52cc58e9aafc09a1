"""AudioSet "small" (the original system's ~134k-clip subset): label ids plus their keyword caption."""

from collections.abc import Mapping
from typing import Any

from etils import epath

from audiocap_jax import ontology
from audiocap_jax.data import features, prepare


class Builder(features.AudioFolderBuilder):
    """AudioSet-small log-mel features; the one "caption" is the keyword string of the clip's labels."""

    SPLITS = prepare.AUDIOSET_SMALL_SPLITS
    DESCRIPTION = (
        "AudioSet subset selected by Kadlcik et al. (DCASE 2023): 10 s YouTube clips with their AudioSet "
        "label ids; the caption is their keyword string (audiocap_jax.ontology.Ontology.keywords)."
    )
    HOMEPAGE = "https://research.google.com/audioset/"
    CITATION = """@inproceedings{gemmeke2017audioset,
  title={Audio Set: An ontology and human-labeled dataset for audio events},
  author={Gemmeke, Jort F. and others},
  booktitle={ICASSP},
  year={2017}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the subset's AudioSet clips (scripts/download_audioset.sh with the subset's annotations), then run
  python -m audiocap_jax.data.prepare audioset-small --audioset-small-path ... --audioset-full-path ...
and pass the AudioFolder it writes as --manual_dir. Keyword captions use the AudioFolder's ontology.json when
present, else the packaged AudioSet ontology."""

    def _prepare_source(self, manual_dir: epath.Path) -> None:
        candidates = [manual_dir / prepare.ONTOLOGY_FILE, manual_dir / "audiofolder" / prepare.ONTOLOGY_FILE]
        self._ontology = ontology.Ontology.load(next((p for p in candidates if p.is_file()), None))

    def _row_texts(self, row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Prepare writes the keyword caption as caption_1; rows of older AudioFolders get it computed."""
        labels = row.get("labels") or []
        if isinstance(labels, str):  # the original's AudioFolders: one comma-separated string
            labels = [label.strip().strip("\"'") for label in labels.split(",")]
        labels = [label for label in labels if label]
        captions = features.row_captions(row) or ([self._ontology.keywords(labels)] if labels else [])
        return captions, labels
