"""The exit codes and the one error convention of every command (`train`, `predict`, `evaluate`, `prepare`,
the TFDS build).

One table of exit codes so scripts and job schedulers can tell the outcomes apart (README, "Exit codes and
errors"). One exception type for problems the user can fix: `UserError(problem, fix)`. Library code raises it
where it validates input (`preflight.py`, the config checks here, checkpoint and dataset loading);
`run(main)` wraps an absl `app.run` program so that a `UserError`, a bad flag or a bad `--config.x.y`
override prints

    Error: <what is wrong, naming the key / file / line>
    fix: <what to do>

and exits with `EXIT_USER`, without a traceback unless `--verbosity=1` (or `AUDIOCAP_TRACEBACK=1`) asks for
one. The argparse commands (`prepare`, the synthetic set) use `ArgumentParser`, which reports a bad argument
the same way. Anything else is an internal failure: Python's traceback and exit code 1, unchanged. A dedicated class
rather than "every ValueError" because a ValueError raised deep inside JAX or TFDS is a bug to report, not a
flag to fix; `UserError` subclasses ValueError so callers that catch ValueError keep working.

`--help` (`-h`) lists the command's flags and every key of its ml_collections config with its default and the
one-line comment it has in the config files, and exits 0 without starting a JAX backend.

This module imports only absl (ml_collections when a config is read), so every command can use it before its
heavy imports, and model code can raise `UserError`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib.util
import io
import logging
import os
import re
import sys
import tokenize
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from absl import app, flags
from absl import logging as absl_logging

if TYPE_CHECKING:  # imported where used: model code (hf.CheckpointError) needs UserError without it
    import ml_collections

EXIT_OK = 0
EXIT_USER = (
    2  # a user error (bad flag, config key or value, missing or unreadable input): one message, no traceback
)
EXIT_PARTIAL = 3  # finished, but some inputs were skipped (counted and named in the output)
EXIT_PREEMPTED = (
    75  # EX_TEMPFAIL: stopped by SIGTERM with a checkpoint saved; rerun the same command to resume
)

TRACEBACK_ENV = "AUDIOCAP_TRACEBACK"  # "1": user errors also print their traceback
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"  # the repository's config files
PREDICT_CONFIG = str(CONFIGS_DIR / "predict.py")  # predict's and evaluate's default, wherever they run from
# Where our own log records come from; `run` drops INFO from any other source (Orbax, TFDS, Grain, JAX) unless
# --verbosity>=1.
OUR_SOURCES = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("audiocap_jax", "configs", "tfds_builders", "benchmarks")
)
HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "--helpfull", "-?")
# The fix printed for an input error raised without one (a ValueError naming a file or row in `prepare`).
DEFAULT_FIX = "correct the argument or input file named above; --help lists the options"


class UserError(ValueError):
    """A problem the user can fix: what is wrong (naming the key, file or line) and how to fix it."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem, fix)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\nfix: {self.fix}" if self.fix else self.problem


# ---------------------------------------------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------------------------------------------
def wants_traceback(argv: Sequence[str] = ()) -> bool:
    """`AUDIOCAP_TRACEBACK=1`, or absl verbosity >= 1 (parsed, or still on the command line)."""
    if os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
        return True
    if flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS:
        return flags.FLAGS.verbosity >= 1
    for index, arg in enumerate(argv):
        match = re.fullmatch(r"--?(?:verbosity|v)(?:=(-?\d+))?", arg)
        if match:
            value = match.group(1) or (argv[index + 1] if index + 1 < len(argv) else "0")
            return value.lstrip("-").isdigit() and int(value) >= 1
    return False


def format_user_error(error: BaseException) -> str:
    """`Error: <problem>` and `fix: <fix>`: the two lines every command prints for a user error.

    Every error gets a `fix:` line, so a script (or a person) can rely on both; an error raised without one
    (a plain ValueError naming a file or row) gets `DEFAULT_FIX`.
    """
    problem, fix = (error.problem, error.fix) if isinstance(error, UserError) else (str(error), "")
    return f"Error: {problem}\nfix: {fix or DEFAULT_FIX}"


def print_user_error(error: BaseException, argv: Sequence[str] = ()) -> None:
    """Print `Error: ...` and `fix: ...` on stderr, after the traceback only when asked for one."""
    if wants_traceback(argv):
        traceback.print_exception(error)
    print(format_user_error(error), file=sys.stderr)


def exit_user_error(error: BaseException, argv: Sequence[str] = ()) -> NoReturn:
    print_user_error(error, argv)
    sys.exit(EXIT_USER)


def finished(skipped: str | None) -> int:
    """The exit code of a command that ran to its end: `EXIT_PARTIAL`, with `skipped` (what was left out and
    where it is named) on stderr, when some inputs were skipped; else `EXIT_OK`."""
    if skipped is None:
        return EXIT_OK
    print(skipped, file=sys.stderr)
    return EXIT_PARTIAL


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the error convention: a bad or missing argument prints `Error:` and `fix:` and exits
    `EXIT_USER`, instead of argparse's `usage: ... <prog>: error: ...`. Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        exit_user_error(UserError(f"{self.prog}: {message}.", f"`{self.prog} --help` lists the arguments"))


class _OwnInfoOnly(logging.Filter):
    """Drops INFO (and below) records of code outside `OUR_SOURCES` unless the run asked for them with
    `--verbosity=1` or more; warnings and errors always pass.

    A filter on absl's handler rather than levels of named loggers: Orbax, TFDS and Grain log through absl
    (one logger, "absl", for every library and for us), JAX through its own loggers; both reach this handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.WARNING
            or absl_logging.get_verbosity() >= absl_logging.DEBUG
            or any(source in record.pathname for source in OUR_SOURCES)
        )


def quiet_library_logs() -> None:
    """Keep a command's log to our own records (banner, parameter count, validation tables, summary): no
    third-party INFO unless `--verbosity=1`. `run` calls it for every command; idempotent."""
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        handler.addFilter(_OwnInfoOnly())


# PCI vendors of the accelerators JAX has plugins for: NVIDIA, Google (TPU), AMD GPUs.
_ACCELERATOR_PCI_VENDORS = ("0x10de", "0x1ae0", "0x1002")
_ACCELERATOR_DEVICE_FILES = ("/dev/nvidia0", "/dev/accel0", "/dev/kfd")


def accelerator_present() -> bool:
    """Whether this machine has a GPU or TPU, from its PCI devices and device files (nothing is opened)."""
    if any(Path(f).exists() for f in _ACCELERATOR_DEVICE_FILES):
        return True
    for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"):
        with contextlib.suppress(OSError):
            if vendor.read_text().strip() in _ACCELERATOR_PCI_VENDORS:
                return True
    return False


def _use_cpu_without_accelerators() -> None:
    """On a machine with no GPU or TPU, run JAX on the CPU without asking the TPU and CUDA plugins first.

    An environment with `jax[tpu]` or `jax[cuda13]` installed (to compile for pods with
    `python -m audiocap_jax.aot`) otherwise prints libtpu's and CUDA's start-up complaints on every
    command. An explicit `JAX_PLATFORMS` wins.
    """
    if os.environ.get("JAX_PLATFORMS") or accelerator_present():
        return
    import jax

    jax.config.update("jax_platforms", "cpu")


# XLA:CPU's default scheduler runs independent ops concurrently at the price of keeping more buffers alive:
# whisper-tiny's train step at batch 8 needs 3.3 GiB of temporaries with it and 2.6 GiB without, at the same
# speed (benchmarks/bench_train.py). The CPU compiler reads it only from XLA_FLAGS (not from jit's
# compiler_options); other backends ignore xla_cpu_* flags.
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def _set_cpu_compiler_flags() -> None:
    """Add XLA:CPU's scheduler flag above to XLA_FLAGS, keeping a value the user set.

    XLA reads XLA_FLAGS when JAX creates the backend, not at import, so this runs where a process starts
    (`start_process`), before its first computation; importing this package changes no environment variable.
    """
    if CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_SCHEDULER_FLAG}=false".strip()


def start_process() -> None:
    """What every process of ours does before its first computation (`run` for the commands; the tests'
    conftest; each benchmark's `main`): XLA:CPU's flags, and the CPU platform on a machine without GPU or TPU.
    Without the latter, a CPU machine with the TPU plugin installed (for `aot`) can deadlock the CPU devices'
    collectives of a multi-device program."""
    _set_cpu_compiler_flags()
    _use_cpu_without_accelerators()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` on success, removed on failure.

    So an output file is either complete or absent (its previous version kept), never half-written.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# ml_collections config files: loading, keys, comments, override checks.
# ---------------------------------------------------------------------------------------------------------------
def load_config(spec: str, flag: str) -> ml_collections.ConfigDict:
    """`path.py[:arg]` -> its `get_config(arg)`, as ml_collections' config flag loads it; UserError on failure."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise UserError(
            f"--{flag}={spec}: no such config file (relative paths start at {Path.cwd()}).",
            f"pass an existing file, e.g. --{flag}={CONFIGS_DIR / 'smoke.py'}",
        )
    module_spec = importlib.util.spec_from_file_location(f"{flag.replace('-', '_')}_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(*([arg] if arg else []))
    except ValueError as error:  # configs/common.py:parse_arg names the unknown argument
        raise UserError(f"--{flag}={spec}: {error}", f"fix the part after ':' in --{flag}") from error


def config_leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """`{"optim.lr": 2e-05, ...}`: every non-ConfigDict value by its dotted path, in definition order."""
    import ml_collections  # here, not at import: model code raises UserError without it

    leaves: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            leaves |= config_leaves(value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def config_comments(path: str | Path) -> dict[str, str]:
    """One-line meaning of each key a config file sets: its trailing comment, else the comment block above.

    Covers `c.a.b = value  # comment`, keys of `dict(key=value, ...)` / `{"key": value}` literals assigned
    to a path, and the decoding keys a section gets with `c.a.update(decoding_keys(...))`, whose meanings are
    declared once in `search_settings.py`. Config files that the file imports from `configs` (e.g. base.py)
    are read first, so a file's own comment on a key wins over the base's.
    """
    path = Path(path)
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "configs":
            for alias in node.names:
                imported = path.parent / f"{alias.name}.py"
                if imported.is_file():
                    found = config_comments(imported) | found

    def meaning(first_line: int, last_line: int) -> str:
        for n in range(first_line, last_line + 1):
            if n in comments and not lines[n - 1].lstrip().startswith("#"):
                return comments[n]
        above, n = [], first_line - 1
        while n >= 1 and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        text = " ".join(above)
        return text.split(". ")[0].rstrip(".") if text else ""

    def literal_keys(value: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        if isinstance(value, ast.Call):  # ConfigDict(dict(...)) / ({...}), dict(base, k=v), helper(k=v, ...)
            for argument in value.args:
                yield from literal_keys(argument, prefix)
            for keyword in value.keywords:
                if keyword.arg:
                    yield f"{prefix}.{keyword.arg}", keyword
                    yield from literal_keys(keyword.value, f"{prefix}.{keyword.arg}")
        elif isinstance(value, ast.Dict):
            for key, item in zip(value.keys, value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    yield f"{prefix}.{key.value}", item
                    yield from literal_keys(item, f"{prefix}.{key.value}")

    def dotted(node: ast.AST) -> list[str] | None:
        """`c.a.b` -> ["a", "b"] (the root name dropped); None for anything else."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        return parts if isinstance(node, ast.Name) else None

    own: dict[str, str] = {}
    for node in ast.walk(tree):
        if _is_decoding_update(node):
            from audiocap_jax.decoding.search_settings import MEANINGS  # plain Python, no JAX

            prefix = "".join(f"{part}." for part in dotted(node.func.value) or [])
            own |= {f"{prefix}{key}": meaning for key, meaning in MEANINGS.items()}
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        parts = dotted(node.targets[0])
        if not parts:
            continue
        key = ".".join(parts)
        pairs = [(key, meaning(node.lineno, node.lineno))]
        pairs += [(k, meaning(n.lineno, n.end_lineno)) for k, n in literal_keys(node.value, key)]
        for (
            sub_key,
            text,
        ) in pairs:  # a later, uncommented assignment (e.g. a runlocal branch) keeps the meaning
            if text or sub_key not in own:
                own[sub_key] = text
    return found | {key: text for key, text in own.items() if text or key not in found}


def _is_decoding_update(node: ast.AST) -> bool:
    """Whether `node` is `<path>.update(decoding_keys(...))` (the decoding keys of configs/base.py's `eval`
    section and of configs/predict.py)."""

    def name(function: ast.AST) -> str:
        return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")

    return (
        isinstance(node, ast.Call)
        and name(node.func) == "update"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Call)
        and name(node.args[0].func) == "decoding_keys"
    )


def _override_paths(argv: Sequence[str], flag: str) -> Iterator[tuple[str, str]]:
    """(argument as typed, dotted key) of every `--flag.a.b[=v]` / `--noflag.a.b` on the command line."""
    pattern = re.compile(rf"--?(?:no)?{re.escape(flag)}\.([^=]+)(?:=.*)?")
    for arg in argv:
        match = pattern.fullmatch(arg)
        if match:
            yield arg, match.group(1)


def _initials(name: str) -> str:
    return "".join(part[0] for part in name.split("_") if part)


def _nearest(name: str, candidates: Sequence[str]) -> list[str]:
    """Spelling neighbours (difflib), and abbreviations either way: learning_rate <-> lr."""
    abbreviated = [c for c in candidates if len(c) > 1 and (c == _initials(name) or name == _initials(c))]
    return abbreviated + [
        c for c in difflib.get_close_matches(name, candidates, n=3, cutoff=0.6) if c not in abbreviated
    ]


def check_overrides(argv: Sequence[str], flag: str, config: ml_collections.ConfigDict, program: str) -> None:
    """Every `--<flag>.<key>` names an existing key; otherwise a UserError suggesting the nearest ones.

    ml_collections would fail too, but after 20-50 lines of chained tracebacks ending in an escaped repr
    (`'\\'num_beam\\'\\nDid you mean...'`) or a bare `AttributeError: "'learning_rate'"`.
    """
    leaves = config_leaves(config)
    sections = {key.rpartition(".")[0] for key in leaves}
    for arg, key in _override_paths(argv, flag):
        if key in leaves or key in sections:
            continue
        parent, _, name = key.rpartition(".")
        while parent and parent not in sections:
            parent, _, name = parent.rpartition(".")
        siblings = sorted(
            {
                k[len(parent) + 1 :].split(".")[0] if parent else k.split(".")[0]
                for k in leaves
                if not parent or k.startswith(parent + ".")
            }
        )
        close = [
            f"{parent}.{s}" if parent else s for s in _nearest(name, siblings)
        ] or difflib.get_close_matches(key, list(leaves), n=3, cutoff=0.6)
        where = f"--{flag}.{parent}" if parent else f"--{flag}"
        suggestion = f"did you mean {' or '.join(f'--{flag}.{c}' for c in close)}? " if close else ""
        raise UserError(
            f"{arg.split('=')[0]}: the config has no key {key!r}; {where} has: {', '.join(siblings)}.",
            f"{suggestion}`{program} --help` lists every key with its default.",
        )


def config_help(config: ml_collections.ConfigDict, config_path: str | Path, flag: str) -> str:
    """The `--help` table of a config: key, default and the one-line meaning from the config files."""
    comments = config_comments(config_path)
    leaves = config_leaves(config)
    width = max(len(key) for key in leaves) + 2
    lines = [f"Config keys of {config_path} (override with --{flag}.<key>=<value>):"]
    for key, value in leaves.items():
        default = repr(value)
        meaning = comments.get(key, "")
        lines.append(f"  {key:<{width}}{default:<24} {meaning}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The wrapper around absl's app.run.
# ---------------------------------------------------------------------------------------------------------------
def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{flag}" and index + 1 < len(argv):
            return argv[index + 1]
    return None


_TYPE_NAMES = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple: "a tuple",
}


def _flag_error(error: flags.Error, leaves: Mapping[str, Any], flag: str | None) -> UserError:
    """A flag parsing error as a UserError; for a config key, its expected type and default."""
    message = str(error).strip()
    match = re.match(r"flag --([\w.-]+)=", message)
    name = match.group(1) if match else ""
    if flag and name.startswith(f"{flag}."):
        key = name[len(flag) + 1 :]
        if key in leaves:
            default = leaves[key]
            kind = _TYPE_NAMES.get(type(default), type(default).__name__)
            return UserError(message, f"--{name} takes {kind}, e.g. its default: --{name}={default!r}")
    return UserError(message, "see --help for the flags and their types")


def run(
    main: Callable[[list[str]], Any],
    *,
    define_flags: Callable[[], None] | None = None,
    config_flag: str | None = None,
    default_config: str | None = None,
    program: str = "",
    flags_parser: Callable[[list[str]], Any] | None = None,
) -> NoReturn:
    """`app.run(main)` with the error convention: UserError / bad flags -> `Error:` + `fix:`, exit 2.

    Args:
      main: the absl main; it may raise UserError or app.UsageError for the user to fix.
      define_flags: defines the command's flags (called here, after the config overrides are checked,
        because ml_collections parses a config flag's default as soon as it is defined).
      config_flag: name of the command's `config_flags.DEFINE_config_file` flag, e.g. "config".
      default_config: the config file `--help` and the override check read when the flag is not given.
      program: how the user runs it, for messages (`python -m audiocap_jax.train`).
      flags_parser: a parser other than absl's flags (the TFDS build's); it handles `--help` itself and
        raises UserError for bad arguments.
    """
    argv = list(sys.argv)
    quiet_library_logs()
    start_process()
    program = program or f"python -m {sys.modules['__main__'].__spec__.name}"
    leaves: dict[str, Any] = {}
    try:
        config_spec = (_flag_value(argv, config_flag) or default_config) if config_flag else None
        config = load_config(config_spec, config_flag) if config_spec else None
        if config is not None:
            leaves = config_leaves(config)
        if flags_parser is None and any(arg in HELP_FLAGS for arg in argv[1:]):
            sys.argv = argv[:1]  # define the flags without parsing any override
            if define_flags is not None:
                define_flags()
            text = [(sys.modules["__main__"].__doc__ or "").strip()]
            own_flags = flags.FLAGS.main_module_help()
            if own_flags:  # e.g. `report` has none: its usage is in its docstring
                text += ["", "Flags:", own_flags]
            if config is not None:
                text += ["", config_help(config, config_spec.partition(":")[0], config_flag)]
            print("\n".join(text))
            sys.exit(EXIT_OK)
        if config is not None:
            check_overrides(argv[1:], config_flag, config, program)
        if define_flags is not None:
            define_flags()

        def parse_flags(args: list[str]) -> list[str]:
            try:
                return flags.FLAGS(args)
            except flags.Error as error:
                raise _flag_error(error, leaves, config_flag) from error

        def guarded_main(args: list[str]) -> Any:
            try:
                return main(args)
            except app.UsageError as error:
                raise UserError(str(error), f"`{program} --help` lists the flags") from error

        app.run(guarded_main, flags_parser=flags_parser or parse_flags)
    except UserError as error:
        exit_user_error(error, argv)
    sys.exit(EXIT_OK)  # app.run always exits; this line is for type checkers
