#!/usr/bin/env bash
# The quick-start pipeline on the embedded default: tiny models and synthesised clips, no download.
# Every step is a plain a2vtool command reading the previous step's artifacts from runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0
Q=runs/quickstart

a2vtool models tiny --out $Q/models                                   # tiny AST, SD, FLUX, CLIP (HF layout)
a2vtool demo-data --out $Q/data --classes 4 --clips 24 --duration 1.0   # 4 classes of distinct sounds
a2vtool embed --data $Q/data --model $Q/models/ast --out $Q/cache/embeddings \
    --token-mode pool:16 --set duration=1.0                            # AST embedding cache (a re-run computes nothing)
a2vtool federate --config configs/federate_tiny.json --out $Q/federate-$(date +%s)   # 4 nodes, FedAvg, 5 rounds
