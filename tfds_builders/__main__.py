"""`tfds build` without TensorFlow: `python -m tfds_builders build tfds_builders/clotho --manual_dir=... ...`.

The `tfds` console script imports TensorFlow at startup (its `convert_format` command evaluates
`tf.train.Example` on import), although building our ArrayRecord datasets never touches TensorFlow. This entry
point runs TFDS's own `build` command (same flags: --config, --manual_dir, --data_dir, --file_format, ...)
and nothing else. With tensorflow installed, `tfds build tfds_builders/clotho ...` runs the same code.
"""

import importlib.util
import sys

from absl import app, logging
from tensorflow_datasets.scripts.cli import build, cli_utils

from audiocap_jax import cli
from audiocap_jax.data import features

_USAGE = "usage: python -m tfds_builders build tfds_builders/<name> [tfds build flags, see build --help]"


def _parse_flags(argv: list[str]) -> build.Args:
    if len(argv) < 2 or argv[1] != "build":
        sys.exit(f"{_USAGE}\n`build` is the only command.")
    return cli_utils.make_flags_parser(build.Args, description="tfds build, TensorFlow-free")(argv[1:])


def _require_beam(args: build.Args) -> None:
    """TFDS drops --beam_pipeline_options when apache-beam is missing and builds locally; stop instead."""
    if args.generation.beam_pipeline_options and importlib.util.find_spec("apache_beam") is None:
        print(features.BEAM_MISSING, file=sys.stderr)
        sys.exit(cli.EXIT_USER)


def _main(args: build.Args) -> None:
    _require_beam(args)
    logging.set_verbosity(logging.INFO)
    logging.set_stderrthreshold(logging.INFO)
    args.execute()


if __name__ == "__main__":
    app.run(_main, flags_parser=_parse_flags)
