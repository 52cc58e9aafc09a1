#!/usr/bin/env bash
# Downloads AudioSet segments from YouTube: one audio file per segment, cut to its start and end.
#
# Usage: scripts/download_audioset.sh [-j JOBS] [-f FORMAT] [-l LOG] SEGMENTS OUTDIR
#
#   SEGMENTS  an AudioSet segments CSV (lines starting with '#' are skipped, then
#             `YTID, start_seconds, end_seconds, "labels"`), or a .jsonl file with youtube_id,
#             start_seconds and end_seconds per line (the AudioSet-small annotations).
#   OUTDIR    receives OUTDIR/<YTID>.<FORMAT>. For `python -m audiocap_jax.data.prepare` download each
#             segment list into <audioset>/audios/<list>, e.g. eval_segments.csv -> <audioset>/audios/eval.
#   -j JOBS   parallel downloads (default: the number of cores).
#   -f FORMAT audio format yt-dlp converts to, also the file extension (default: mp3).
#   -l LOG    failure log (default: OUTDIR/download_failures.tsv). Each failed segment appends one line
#             `YTID<TAB>start<TAB>end<TAB>reason`; lines of SEGMENTS that cannot be parsed are logged too.
#
# Resumable: a segment whose OUTDIR/<YTID>.<FORMAT> exists and is not empty is skipped, so re-running
# the same command retries only what is missing. yt-dlp writes to a hidden partial file that is renamed
# into place when complete: an interrupted run never leaves a file that looks finished.
# yt-dlp fetches only the segment (--download-sections) and converts it with ffmpeg. Extra yt-dlp
# options (cookies, rate limits) go in the YT_DLP_ARGS environment variable, e.g.
#   YT_DLP_ARGS="--cookies cookies.txt --limit-rate 2M" scripts/download_audioset.sh ...
# Exit status: 0 every segment is present, 1 some failed (see LOG), 2 bad usage or a missing tool.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

fail_usage() {
  echo "download_audioset.sh: $1" >&2
  usage >&2
  exit 2
}

jobs=$(nproc 2>/dev/null || echo 4)
format=mp3
log=""
while getopts ":j:f:l:h" option; do
  case $option in
    j) jobs=$OPTARG ;;
    f) format=$OPTARG ;;
    l) log=$OPTARG ;;
    h) usage; exit 0 ;;
    :) fail_usage "option -$OPTARG needs a value" ;;
    *) fail_usage "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || fail_usage "expected SEGMENTS and OUTDIR, got $# argument(s)"
segments=$1
outdir=$2
[ -f "$segments" ] || fail_usage "segments file '$segments' does not exist"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || fail_usage "-j must be a positive integer, got '$jobs'"
[[ $format =~ ^[a-z0-9]+$ ]] || fail_usage "-f must be an audio format such as mp3, got '$format'"
for tool in yt-dlp ffmpeg; do
  if ! command -v "$tool" >/dev/null; then
    echo "download_audioset.sh: '$tool' is not on PATH; install it (pip install yt-dlp; apt-get install ffmpeg)." >&2
    exit 2
  fi
done
mkdir -p "$outdir"
log=${log:-$outdir/download_failures.tsv}
status=$(mktemp)
trap 'rm -f "$status"' EXIT

# Prints "YTID START END" per segment (each YTID once); logs lines that do not parse.
list_segments() {
  awk -v jsonl="$([[ $segments == *.jsonl ]] && echo 1 || echo 0)" -v failure_log="$log" -v status="$status" '
    function json_field(name,    key, text) {
      key = "\"" name "\"[ \t]*:[ \t]*"
      if (!match($0, key "\"[^\"]*\"") && !match($0, key "[-+0-9.eE]+")) return ""
      text = substr($0, RSTART, RLENGTH)
      sub(key, "", text)
      gsub(/"/, "", text)
      return text
    }
    /^[ \t\r]*(#|$)/ { next }
    {
      if (jsonl) {
        id = json_field("youtube_id"); start = json_field("start_seconds"); end = json_field("end_seconds")
      } else {
        split($0, fields, ","); id = fields[1]; start = fields[2]; end = fields[3]
        gsub(/[ \t\r]/, "", id); gsub(/[ \t\r]/, "", start); gsub(/[ \t\r]/, "", end)
      }
      if (id !~ /^[A-Za-z0-9_-]+$/ || start !~ /^[0-9]+(\.[0-9]*)?$/ || end !~ /^[0-9]+(\.[0-9]*)?$/) {
        printf "line %d\t\t\tcannot parse: %s\n", NR, $0 >> failure_log
        printf "failed\tline %d\n", NR >> status
        next
      }
      if (!seen[id]++) print id, start, end
    }' "$segments"
}

# Downloads one segment; appends "downloaded|skipped|failed<TAB>YTID" to $status.
download_one() {
  local id=$1 start=$2 end=$3
  local target="$outdir/$id.$format" partial="$outdir/.$id.part" errors reason
  if [ -s "$target" ]; then
    printf 'skipped\t%s\n' "$id" >>"$status"
    return 0
  fi
  errors=$(mktemp)
  # shellcheck disable=SC2086  # YT_DLP_ARGS is a list of options, split on purpose.
  if yt-dlp --quiet --no-warnings --no-progress --no-playlist -f "bestaudio/best" \
      --download-sections "*$start-$end" --extract-audio --audio-format "$format" \
      -o "$partial.%(ext)s" ${YT_DLP_ARGS:-} "https://www.youtube.com/watch?v=$id" 2>"$errors" \
      && [ -s "$partial.$format" ]; then
    mv -f "$partial.$format" "$target"
    printf 'downloaded\t%s\n' "$id" >>"$status"
    echo "downloaded $id"
  else
    reason=$(grep -v '^[[:space:]]*$' "$errors" | tail -n 1 | tr '\t' ' ')
    printf '%s\t%s\t%s\t%s\n' "$id" "$start" "$end" "${reason:-yt-dlp wrote no $format file}" >>"$log"
    printf 'failed\t%s\n' "$id" >>"$status"
    rm -f "$partial".*
    echo "failed $id: ${reason:-yt-dlp wrote no $format file}" >&2
  fi
  rm -f "$errors"
}

export outdir format log status
export -f download_one
list_segments | xargs -r -n 3 -P "$jobs" "$BASH" -c 'download_one "$@"' download_one

count() { grep -c "^$1"$'\t' "$status" || true; }
downloaded=$(count downloaded)
skipped=$(count skipped)
failed=$(count failed)
summary="$downloaded downloaded, $skipped already present, $failed failed"
if [ "$failed" -gt 0 ]; then
  echo "$summary (listed in $log)"
  exit 1
fi
echo "$summary"
