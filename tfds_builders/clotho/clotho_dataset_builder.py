"""Clotho v2.1: 5 captions per clip, every one kept (the pipeline decides how training uses them)."""

from audiocap_jax.data import features, prepare


class Builder(features.AudioFolderBuilder):
    """Clotho v2.1 log-mel features with all five reference captions per clip."""

    SPLITS = prepare.CLOTHO_SPLITS
    DESCRIPTION = "Clotho v2.1 audio captioning: 15-30 s Freesound clips, 5 crowd-sourced captions each."
    HOMEPAGE = "https://zenodo.org/records/4783391"
    CITATION = """@inproceedings{drossos2020clotho,
  title={Clotho: an Audio Captioning Dataset},
  author={Drossos, Konstantinos and Lipping, Samuel and Virtanen, Tuomas},
  booktitle={ICASSP},
  year={2020}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download Clotho v2.1 from https://zenodo.org/records/4783391 (audio archives and the captions/metadata CSVs),
extract the audio into ROOT/audiofolder/{development,validation,evaluation,test}/, then run
  python -m audiocap_jax.data.prepare clotho ROOT
and pass ROOT/audiofolder (or ROOT) as --manual_dir. Each split folder then holds its audio and a
metadata.jsonl with file_name and caption_1..caption_5. Optionally shrink validation/evaluation first with
`python -m audiocap_jax.data.prepare limit-clotho-split`."""
