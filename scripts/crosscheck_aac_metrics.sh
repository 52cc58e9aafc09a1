#!/usr/bin/env bash
# Cross-checks our DCASE metrics (audiocap_jax/metrics/scoring.py + dcase.py) against aac-metrics 0.5.5, the
# implementation the DCASE organisers maintain, on the same inputs and the same tiny random stand-in models.
#
# aac-metrics cannot live in the project's environment (0.5.5 imports msclap, which pins numpy<2 and
# transformers<5; 0.6.0 needs a yanked pythonwrench), so it gets a throwaway venv. Steps:
#   1. our venv writes the stand-in models (audiocap_jax/testing/metric_models.py), the inputs and our numbers;
#   2. the throwaway venv runs aac-metrics' own `evaluate(preprocess=True)` (its PTB tokenizer, pointed at
#      pycocoevalcap's jar) for FENSE / SBERT-sim / FER / Vocab / CIDEr-D, and its `_spider_fl_from_outputs`
#      on SPIDEr = (CIDEr-D + the stand-in SPICE) / 2 (SPICE itself cannot run offline);
#   3. prints every corpus and per-clip value with the difference; exits 1 if any differs by more than 1e-6.
# The numbers printed for aac-metrics are the literals pinned in tests/test_dcase_metrics.py.
#
# Needs only the local package index (torch==2.13.0 CPU wheel; pip never pulls a CUDA torch here).
set -euo pipefail

usage() {
  cat <<EOF
usage: scripts/crosscheck_aac_metrics.sh [--python PYTHON] [--venv DIR] [--work DIR]

  --python PYTHON  the project's interpreter (default: .venv/bin/python of this repo, else python3)
  --venv DIR       throwaway venv for aac-metrics 0.5.5 (default: /tmp/aacvenv; created if missing)
  --work DIR       where models, inputs and results go (default: a fresh temp dir)
EOF
}

repo=$(cd "$(dirname "$0")/.." && pwd)
python=""
venv=/tmp/aacvenv
work=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
work=${work:-$(mktemp -d /tmp/aac_crosscheck.XXXXXX)}
mkdir -p "$work"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import aac_metrics" 2>/dev/null; then
  echo "creating $venv with aac-metrics 0.5.5 (a few minutes)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "aac-metrics==0.5.5" "torch==2.13.0" "numpy<2" "transformers<5"
fi
# msclap (imported by aac-metrics, unused here) imports torchaudio, whose compiled extension is built for
# another torch and fails to load; without the .so files torchaudio imports in pure-Python mode.
rm -f "$venv"/lib/python3*/site-packages/torchaudio/lib/*.so

echo "1/3 stand-in models, inputs and our numbers -> $work"
(cd "$repo" && "$python" -c "
from audiocap_jax.testing.metric_models import write_crosscheck
write_crosscheck('$work')")

# aac-metrics finds the PTB jar at <cache>/aac-metrics/stanford_nlp/; use pycocoevalcap's (the same 3.4.1 jar).
ptb_jar=$(cd "$repo" && "$python" -c "
from pathlib import Path
from pycocoevalcap.tokenizer import ptbtokenizer
print(Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)")
mkdir -p "$work/cache/aac-metrics/stanford_nlp"
cp "$ptb_jar" "$work/cache/aac-metrics/stanford_nlp/"

echo "2/3 aac-metrics 0.5.5"
# cwd = models: aac-metrics loads "paraphrase-TinyBERT-L6-v2" and the detector's model_type by name, and a
# local directory of that name wins; FENSE_DATA is where it looks for echecker_clotho_audiocaps_base.ckpt.
# -O: aac-metrics refuses Java > 13 in `if __debug__` checks, even for the PTB tokenizer, which runs on 17.
(cd "$work/models" && FENSE_DATA="$work/models" HF_HUB_OFFLINE=1 "$venv/bin/python" -O - "$work" <<'EOF'
import json
import sys
from pathlib import Path

import torch
from aac_metrics.functional.evaluate import evaluate
from aac_metrics.functional.spider_fl import _spider_fl_from_outputs

work = Path(sys.argv[1])
inputs = json.loads((work / "inputs.json").read_text())
corpus, sents = evaluate(
    inputs["candidates"],
    inputs["references"],
    preprocess=True,
    metrics=["fense", "vocab", "cider_d"],
    cache_path=str(work / "cache"),
    device="cpu",
)
spider = (sents["cider_d"] + torch.tensor(inputs["spice"], dtype=torch.float64)) / 2
fer_outs = ({"fer": corpus["fer"]}, {"fer": sents["fer"]})
spider_fl_corpus, spider_fl_sents = _spider_fl_from_outputs(({"spider": spider.mean()}, {"spider": spider}), fer_outs)
result = {
    "corpus": {
        "sbert_sim": float(corpus["sbert_sim"]),
        "fer": float(corpus["fer"]),
        "fense": float(corpus["fense"]),
        "vocab": float(corpus["vocab.cands"]),
        "cider_d": float(corpus["cider_d"]),
        "spider_fl": float(spider_fl_corpus["spider_fl"]),
    },
    "per_clip": {
        key: [float(v) for v in values]
        for key, values in (
            ("sbert_sim", sents["sbert_sim"]),
            ("fer", sents["fer"]),
            ("fense", sents["fense"]),
            ("cider_d", sents["cider_d"]),
            ("spider_fl", spider_fl_sents["spider_fl"]),
        )
    },
}
(work / "aac.json").write_text(json.dumps(result, indent=1))
EOF
)

echo "3/3 differences (ours - aac-metrics)"
"$python" - "$work" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
ours, aac = (json.loads((work / f"{side}.json").read_text()) for side in ("ours", "aac"))
worst = 0.0
print(f"{'metric':<22} {'aac-metrics 0.5.5':>22} {'ours':>22} {'difference':>12}")
for key, value in aac["corpus"].items():
    diff = ours["corpus"][key] - value
    worst = max(worst, abs(diff))
    print(f"{key:<22} {value!r:>22} {ours['corpus'][key]!r:>22} {diff:>12.2e}")
for key, values in aac["per_clip"].items():
    for i, value in enumerate(values):
        diff = ours["per_clip"][key][i] - value
        worst = max(worst, abs(diff))
        print(f"{key + f'[{i}]':<22} {value!r:>22} {ours['per_clip'][key][i]!r:>22} {diff:>12.2e}")
print(f"largest difference {worst:.2e}: {'OK' if worst <= 1e-6 else 'MISMATCH'} (tolerance 1e-6)")
sys.exit(0 if worst <= 1e-6 else 1)
EOF
