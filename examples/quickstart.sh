#!/usr/bin/env bash
# The quick-start pipeline on the embedded default: tiny models and synthesised clips, no download.
# Every step is a plain a2vtool command reading the previous step's artifacts from runs/quickstart/.
# Re-running it is cheap: cached embeddings are reused, a finished federation is resumed (nothing to do),
# and images that exist are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0
Q=runs/quickstart

a2vtool models tiny --out $Q/models                                     # tiny AST, SD, FLUX, CLIP (HF layout)
a2vtool demo-data --out $Q/data --classes 4 --clips 24 --duration 1.0   # 4 classes of distinct sounds
a2vtool embed --data $Q/data --model $Q/models/ast --out $Q/cache/embeddings \
    --token-mode pool:16 --set duration=1.0                              # AST embedding cache
a2vtool train-generator --config configs/train-generator_tiny.json      # per-class VAEs of the embeddings
if [ -f $Q/federate/run.json ]; then                                     # 4 nodes x 2 classes, FedAvg, 10 rounds
    a2vtool federate --resume $Q/federate
else
    a2vtool federate --config configs/federate_tiny.json
fi
a2vtool generate-images --config configs/generate-images_tiny.json --eval-clip $Q/models/clip   # images from sound
