"""`tfds build` without TensorFlow: `python -m tfds_builders build tfds_builders/clotho --manual_dir=... ...`.

The `tfds` console script imports TensorFlow at startup (its `convert_format` command evaluates
`tf.train.Example` on import), although building our ArrayRecord datasets never touches TensorFlow. This entry
point runs TFDS's own `build` command (same flags: --config, --manual_dir, --data_dir, --file_format, ...)
and nothing else. With tensorflow installed, `tfds build tfds_builders/clotho ...` runs the same code.

Before building it checks what TFDS would otherwise report deep inside a traceback (or with its catalogue of
~250 dataset names): the builder name, the config, a --manual_dir holding prepared split folders whose
metadata.jsonl is valid, a writable --data_dir. Those problems print `error:` and `fix:` and exit 2
(audiocap_jax/cli.py).
"""

import importlib.util
from pathlib import Path

from absl import logging
from tensorflow_datasets.scripts.cli import build, cli_utils

from audiocap_jax import cli, preflight
from audiocap_jax.data import features

_USAGE = "python -m tfds_builders build tfds_builders/<name> --manual_dir=AUDIOFOLDER [tfds build flags, see build --help]"


def _parse_flags(argv: list[str]) -> build.Args:
    if len(argv) < 2 or argv[1] != "build":
        raise cli.UserError(f"`build` is the only command; got {argv[1:2] or 'none'}.", f"run {_USAGE}")
    return cli_utils.make_flags_parser(build.Args, description="tfds build, TensorFlow-free")(argv[1:])


def check_args(args: build.Args) -> None:
    """Beam, builder names, config, manual_dir (prepared split folders, valid rows) and data_dir, before building.

    TFDS drops --beam_pipeline_options when apache-beam is missing and builds locally: that is refused too, and
    so are options Beam would refuse only once the build had created the dataset folder.
    """
    if args.generation.beam_pipeline_options and importlib.util.find_spec("apache_beam") is None:
        raise cli.UserError(
            "--beam_pipeline_options were given but apache-beam is not installed.",
            "pip install -e '.[beam]' (README, 'Builds on Apache Beam'), or build without Beam options",
        )
    if args.generation.beam_pipeline_options:
        try:
            features.beam_options(args.generation.beam_pipeline_options)
        except ValueError as error:
            raise cli.UserError(
                str(error),
                "write Beam's own options without dashes, comma-separated, e.g. "
                "--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2 (README, 'Builds on Apache Beam')",
            ) from error
    targets = args.positional_datasets + args.datasets
    if not targets:
        raise cli.UserError("no dataset to build.", f"run {_USAGE}")
    configs = [config.name for config in features.MEL_CONFIGS]
    if args.generation.config is not None and args.generation.config not in configs:
        raise cli.UserError(
            f"--config={args.generation.config} is unknown.", f"use one of {', '.join(configs)}"
        )
    for target in targets:
        try:
            builder = features.load_builder_class(Path(target).name)
        except ValueError as error:
            raise cli.UserError(f"{target}: {error}", "pass tfds_builders/<one of them>") from error
        if args.paths.manual_dir is None:
            raise cli.UserError(
                f"{target} needs --manual_dir.",
                "pass the AudioFolder that `python -m audiocap_jax.data.prepare` wrote",
            )
        try:
            manual_dir = features.source_dir(args.paths.manual_dir)
        except ImportError as error:  # names the package, e.g. gcsfs for gs://
            raise cli.UserError(str(error), "install that package, or copy the AudioFolder here") from error
        try:
            for folder in features.find_split_folders(manual_dir, builder.SPLITS).values():
                features.read_split_rows(folder)
        except (FileNotFoundError, ValueError) as error:  # both name the folder or file and row
            raise cli.UserError(str(error), "see docs/data.md for the AudioFolder layout") from error
    if "://" not in str(args.paths.data_dir):  # a bucket (gs://...) is checked by TFDS when it writes
        preflight.check_writable_dir(args.paths.data_dir, "--data_dir")


def _main(args: build.Args) -> None:
    check_args(args)
    logging.set_verbosity(logging.INFO)
    logging.set_stderrthreshold(logging.INFO)
    args.execute()


if __name__ == "__main__":
    cli.run(_main, flags_parser=_parse_flags, program="python -m tfds_builders build")
