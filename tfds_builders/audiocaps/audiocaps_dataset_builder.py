"""AudioCaps: YouTube clips from AudioSet with 1 (train) or 5 (valid/test) human captions."""

from audiocap_jax.data import features, prepare


class Builder(features.AudioFolderBuilder):
    """AudioCaps log-mel features with every reference caption of a clip (1 to 5)."""

    SPLITS = prepare.AUDIOCAPS_SPLITS
    DESCRIPTION = (
        "AudioCaps: 10 s AudioSet clips with crowd-sourced captions (1 per train clip, 5 otherwise)."
    )
    HOMEPAGE = "https://audiocaps.github.io/"
    CITATION = """@inproceedings{kim2019audiocaps,
  title={AudioCaps: Generating Captions for Audios in The Wild},
  author={Kim, Chris Dongjoo and Kim, Byeongchang and Lee, Hyungjun and Kim, Gunhee},
  booktitle={NAACL-HLT},
  year={2019}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AudioCaps audio is not distributed: download the AudioSet clips it uses (scripts/download_audioset.sh with the
AudioCaps CSVs from https://github.com/cdjkim/audiocaps), then run
  python -m audiocap_jax.data.prepare audiocaps --audiocaps-path ... --audioset-path ... --audio-format mp3
and pass the AudioFolder it writes as --manual_dir. Clips missing from your AudioSet download are dropped
by prepare and listed in its report file."""
