#!/usr/bin/env bash
# Accuracy/speed knobs on the demo model: canvas, proposals, detections.
#   bash benchmarks/tradeoffs.sh OUT_DIR [N_IMAGES]
# For each setting: mask AP of the exported model (ONNX Runtime) on the synthetic validation split
# (seed 2) and the latency of torchvision eager and ONNX Runtime with the same settings.
set -euo pipefail
OUT="${1:-tradeoffs_out}"; N="${2:-60}"
mkdir -p "$OUT"
CKPT="$(python -c 'import mrcnn_edge; print(mrcnn_edge.demo_checkpoint())')"
[ -d "$OUT/val" ] || mrcnn-edge synth --out "$OUT/val" --images "$N" --seed 2 --size 320x320 --quiet
printf '| canvas | proposals | detections | mask AP (ONNX) | torchvision ms | ONNX Runtime ms | speed-up |\n|---|---|---|---|---|---|---|\n' > "$OUT/tradeoffs.md"
for s in 512:1000:100 512:1000:25 512:300:25 320:300:25; do
  IFS=: read -r C P D <<< "$s"
  M="$OUT/m_${C}_${P}_${D}.onnx"
  mrcnn-edge export "$CKPT" -o "$M" --input-size "${C}x${C}" --flavor portable --rpn-post-nms-top-n "$P" --max-detections "$D" >/dev/null 2>&1
  mrcnn-edge validate --checkpoint "$CKPT" --model "$M" --annotations "$OUT/val" --json "$OUT/v_$s.json" >/dev/null 2>&1 || true
  mrcnn-edge benchmark --onnx "$M" --input-size "${C}x${C}" --backends torchvision,onnx --rpn-post-nms-top-n "$P" \
    --max-detections "$D" --runs 8 --warmup 2 --json "$OUT/b_$s.json" >/dev/null 2>&1
  python - "$OUT" "$s" <<'PY' >> "$OUT/tradeoffs.md"
import json, sys
out, s = sys.argv[1], sys.argv[2]
c, p, d = s.split(":")
v = json.load(open(f"{out}/v_{s}.json")); b = json.load(open(f"{out}/b_{s}.json"))["results"]
tv, ox = b["torchvision"]["total_ms"]["median"], b["onnx"]["total_ms"]["median"]
print(f"| {c}x{c} | {p} | {d} | {v['ap']['onnx']['mask_AP']:.3f} | {tv:.0f} | {ox:.0f} | {tv / ox:.2f}x |")
PY
  tail -1 "$OUT/tradeoffs.md"
done
