#!/usr/bin/env bash
# Install edge-infer into an emulated Raspberry Pi 4 (aarch64, Debian 12, Python 3.11, the real aarch64
# wheels of ai-edge-litert and tflite-runtime) and check that the bundled replay makes the same decisions
# there as natively on this machine (outputs within one quantization step). The budget is lifted to
# 10 s: this compares what the model decides, not how fast emulation is.
#
# usage: scripts/check_aarch64.sh [WORKDIR]      (default WORKDIR: /tmp/edge-infer-aarch64)
# needs: ../shared/tools/aarch64 beside the project (or EDGE_INFER_AARCH64_TOOLS), qemu-user-static.
# Not part of CI (about 2 minutes and 360 MB); its result is recorded in docs/aarch64.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${EDGE_INFER_AARCH64_TOOLS:-$ROOT/../shared/tools/aarch64}
WORK=${1:-/tmp/edge-infer-aarch64}
SPEC=$ROOT/models/basic_motions/basic_motions.toml
LOG=$ROOT/models/basic_motions/basic_motions_test.csv
[ -x "$TOOLS/setup.sh" ] || { echo "check_aarch64: error: no aarch64 tools at $TOOLS (set EDGE_INFER_AARCH64_TOOLS)" >&2; exit 2; }
command -v qemu-aarch64-static >/dev/null || command -v qemu-aarch64 >/dev/null || {
  echo "check_aarch64: installing qemu-user-static" >&2; apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null; }

mkdir -p "$WORK"
{ "$TOOLS/setup.sh" "$WORK" && BACKENDS=deps REQS_deps="pyserial" "$TOOLS/setup.sh" "$WORK"; } >"$WORK/setup.log" 2>&1 || {
  echo "check_aarch64: error: setup failed, see $WORK/setup.log" >&2; exit 1; }
rm -rf "$WORK/site/proj"
python3 -m pip install -q "$ROOT" --target "$WORK/site/proj" --no-deps >"$WORK/install.log" 2>&1 || {
  echo "check_aarch64: error: pip install --target failed, see $WORK/install.log" >&2; exit 1; }
OUTPUT_SCALE=$(python3 -m edge_infer inspect "$SPEC" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["scale"])')

# Native references: LiteRT here, tflite-runtime in its own numpy<2 virtualenv (as the tests make it).
TFLITE_PY=$ROOT/.cache/venv-tflite-runtime/bin/python
[ -x "$TFLITE_PY" ] || { python3 -m venv "$ROOT/.cache/venv-tflite-runtime" &&
  "$TFLITE_PY" -m pip install -q tflite-runtime "numpy<2" pyserial; }
replay() {  # PYTHON BACKEND OUT [emulated]
  (cd "$ROOT" && PYTHONPATH="$ROOT" "$1" -m edge_infer replay "$LOG" --model "$SPEC" --backend "$2" \
    --budget-ms 10000 --decisions "$3.jsonl" --json > "$3.json")
}
replay python3 litert "$WORK/x86_litert"
replay "$TFLITE_PY" tflite-runtime "$WORK/x86_tflite"
status=0
for pair in litert:litert tflite:tflite-runtime; do
  site=${pair%%:*}; backend=${pair##*:}
  for pi in 4 5; do
    out=$WORK/arm_pi${pi}_$site
    PI=$pi EMU_PYTHONPATH="$WORK/site/proj:$WORK/site/deps" "$TOOLS/run.sh" "$WORK" "$site" -- \
      -m edge_infer replay "$LOG" --model "$SPEC" --backend "$backend" --budget-ms 10000 \
      --decisions "$out.jsonl" --json > "$out.json"
    summary=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("accuracy %(accuracy)s decisions %(decisions)s fallbacks %(fallback_decisions)s backend %(backend)s %(backend_version)s" % s)' "$out.json")
    verdict=$(python3 "$ROOT/scripts/compare_decisions.py" "$WORK/x86_$site.jsonl" "$out.jsonl" \
      --tolerance "$OUTPUT_SCALE") || status=1
    echo "pi$pi $backend: $summary"
    echo "  vs x86 $backend: $verdict"
  done
done
exit $status
