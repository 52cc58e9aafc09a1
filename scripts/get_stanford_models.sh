#!/usr/bin/env bash
# Installs the two Stanford CoreNLP 3.6.0 jars that SPICE needs (stanford-corenlp-3.6.0.jar and
# stanford-corenlp-3.6.0-models.jar) into pycocoevalcap's spice/lib. The pip package ships every other SPICE jar
# but downloads these two at first use, which fails offline; after this script audiocap_jax.metrics finds them
# and reports SPICE and SPIDEr instead of "unavailable".
#
# Needs internet once: the 2015-12-09 CoreNLP release zip (~390 MB) from nlp.stanford.edu. On a machine without
# internet, fetch the zip elsewhere and pass it with --zip. The jar names must match CORENLP_JARS in
# audiocap_jax/metrics/spice_jar.py.
set -euo pipefail

readonly CORENLP=stanford-corenlp-full-2015-12-09
readonly URL="https://nlp.stanford.edu/software/${CORENLP}.zip"
readonly JARS=(stanford-corenlp-3.6.0.jar stanford-corenlp-3.6.0-models.jar)

usage() {
  cat <<EOF
usage: scripts/get_stanford_models.sh [--python PYTHON] [--spice-dir DIR] [--zip FILE] [--force] [--dry-run]

Puts ${JARS[*]} into <spice-dir>/lib.

  --python PYTHON  interpreter whose pycocoevalcap gets the jars
                   (default: .venv/bin/python of this repo if it exists, else python3)
  --spice-dir DIR  pycocoevalcap's spice/ folder, the one holding spice-1.0.jar
                   (default: found through PYTHON)
  --zip FILE       use an already downloaded ${CORENLP}.zip instead of downloading
                   ${URL}
  --force          reinstall even if valid jars are already there
  --dry-run        print the folder the jars would go to and exit
  -h, --help       show this help
EOF
}

die() { echo "get_stanford_models: error: $*" >&2; exit 1; }
usage_error() { echo "get_stanford_models: error: $*" >&2; usage >&2; exit 2; }

python=""
spice_dir=""
zip_file=""
force=0
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python | --spice-dir | --zip)
      [[ $# -ge 2 && -n "$2" ]] || usage_error "$1 needs a value"
      case "$1" in
        --python) python="$2" ;;
        --spice-dir) spice_dir="$2" ;;
        --zip) zip_file="$2" ;;
      esac
      shift 2
      ;;
    --force) force=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$python" ]]; then
  if [[ -x "$repo_root/.venv/bin/python" ]]; then python="$repo_root/.venv/bin/python"; else python=python3; fi
fi
command -v "$python" >/dev/null || die "python interpreter '$python' not found; pass --python"

if [[ -z "$spice_dir" ]]; then
  spice_dir="$("$python" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("pycocoevalcap")
if spec is None or not spec.submodule_search_locations:
    sys.exit("pycocoevalcap is not installed for this python; pip install pycocoevalcap, or pass --python")
print(pathlib.Path(next(iter(spec.submodule_search_locations))) / "spice")
PY
)" || die "could not locate pycocoevalcap with $python"
fi
[[ -f "$spice_dir/spice-1.0.jar" ]] || die "$spice_dir has no spice-1.0.jar; pass pycocoevalcap's spice/ folder as --spice-dir"
lib_dir="$spice_dir/lib"
if [[ "$dry_run" -eq 1 ]]; then
  echo "$lib_dir"
  exit 0
fi
mkdir -p "$lib_dir" 2>/dev/null || die "cannot create $lib_dir"
[[ -w "$lib_dir" ]] || die "$lib_dir is not writable; rerun with permission to write there, or use a writable venv"

valid_jar() { "$python" -c 'import sys, zipfile; sys.exit(0 if zipfile.is_zipfile(sys.argv[1]) else 1)' "$1"; }

if [[ "$force" -eq 0 ]]; then
  installed=1
  for jar in "${JARS[@]}"; do
    [[ -f "$lib_dir/$jar" ]] && valid_jar "$lib_dir/$jar" || installed=0
  done
  if [[ "$installed" -eq 1 ]]; then
    echo "already installed in $lib_dir (use --force to reinstall)"
    exit 0
  fi
fi

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

if [[ -z "$zip_file" ]]; then
  zip_file="$work_dir/$CORENLP.zip"
  echo "downloading $URL (~390 MB) ..."
  if command -v curl >/dev/null; then
    curl -fL --retry 3 -o "$zip_file" "$URL" || die "download failed; fetch $URL elsewhere and pass --zip"
  elif command -v wget >/dev/null; then
    wget -O "$zip_file" "$URL" || die "download failed; fetch $URL elsewhere and pass --zip"
  else
    die "neither curl nor wget found; fetch $URL elsewhere and pass --zip"
  fi
fi
[[ -f "$zip_file" ]] || die "$zip_file does not exist"

# Extract only the two jars (the zip holds ~500 MB of others), into a scratch dir first so a failure leaves
# spice/lib untouched.
"$python" - "$zip_file" "$work_dir" "$CORENLP" "${JARS[@]}" <<'PY'
import pathlib, shutil, sys, zipfile
zip_path, out_dir, prefix, *names = sys.argv[1:]
try:
    archive = zipfile.ZipFile(zip_path)
except (zipfile.BadZipFile, OSError) as e:
    sys.exit(f"get_stanford_models: error: {zip_path} is not a readable zip ({e}); download it again")
with archive:
    for name in names:
        member = f"{prefix}/{name}"
        try:
            info = archive.getinfo(member)
        except KeyError:
            sys.exit(f"get_stanford_models: error: {zip_path} has no {member}; expected {prefix}.zip")
        with archive.open(info) as src, open(pathlib.Path(out_dir) / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY

for jar in "${JARS[@]}"; do
  valid_jar "$work_dir/$jar" || die "$jar extracted from $zip_file is not a valid jar"
done
for jar in "${JARS[@]}"; do
  mv -f "$work_dir/$jar" "$lib_dir/$jar"
  echo "installed $lib_dir/$jar"
done
echo "SPICE can now run; check with: $python -c 'from audiocap_jax.metrics import spice_jar; print(spice_jar.spice_status())'"
