#!/usr/bin/env bash
# Reproduces the README's parity and export numbers on the demo model.
#   bash benchmarks/measure_parity.sh OUT_DIR [N_IMAGES]
# Needs the project's venv on PATH (scripts/_env.sh does that). Writes OUT_DIR/*.json and *.md.
set -euo pipefail
OUT="${1:-parity_out}"; N="${2:-60}"
mkdir -p "$OUT"
CKPT="$(python -c 'import mrcnn_edge; print(mrcnn_edge.demo_checkpoint())')"
[ -d "$OUT/val" ] || mrcnn-edge synth --out "$OUT/val" --images "$N" --seed 2 --size 320x320 --quiet
# canvas = resized size (320) for parity with torchvision
for v in tensorrt:fp32 portable:fp32 portable:fp16; do
  f="${v%%:*}"; p="${v##*:}"
  /usr/bin/time -f "export $f $p 320x320: %e s" mrcnn-edge export "$CKPT" -o "$OUT/demo_${f}_${p}.onnx" --input-size 320x320 --flavor "$f" --precision "$p" 2>&1 | grep -v '^\[export\]'
  mrcnn-edge validate --checkpoint "$CKPT" --model "$OUT/demo_${f}_${p}.onnx" --annotations "$OUT/val" \
    --report "$OUT/validate_${f}_${p}.md" --json "$OUT/validate_${f}_${p}.json" 2>/dev/null | tail -12 || true
done
/usr/bin/time -f "export tensorrt fp32 512x512: %e s" mrcnn-edge export "$CKPT" -o "$OUT/demo_512.onnx" --input-size 512x512 2>&1 | grep -v '^\[export\]'
