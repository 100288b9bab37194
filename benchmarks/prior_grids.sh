#!/usr/bin/env bash
# The built-in prior's model-card sample grids (DDIM 50 steps, CFG 5, seed 0, enlarged 3x): 16 held-in and 16
# held-out captions, singles first, then compositions. Usage: benchmarks/prior_grids.sh PRIOR_FOLDER OUT_DIR
set -euo pipefail
P=$1; O=$2
dreamfusion prior sample "$P" --out "$O/samples_held_in.png" --columns 8 --scale 3 \
  "a red cube, front view" "a blue sphere, front view" "a green torus, front view" "a yellow mug, side view" \
  "a purple chair, front view" "a white house, front view" "an orange car, side view" "a gray arrow, side view" \
  "a pink cone, front view" "a brown pyramid, front view" "a red cylinder, front view" "a green house, side view" \
  "a red cube on top of a blue cylinder, front view" "a yellow sphere next to a purple cone, front view" \
  "a green torus on top of an orange cube, side view" "a white car next to a pink pyramid, side view"
dreamfusion prior sample "$P" --out "$O/samples_held_out.png" --columns 8 --scale 3 \
  "a red car, side view" "a blue mug, side view" "a green chair, front view" "a yellow house, front view" \
  "a purple arrow, side view" "an orange sphere, front view" "a pink cube, front view" "a white cylinder, front view" \
  "a brown cone, front view" "a gray torus, front view" \
  "a red sphere on top of a green cube, front view" "a yellow cone on top of a blue cylinder, front view" \
  "a white mug on top of a brown chair, side view" "a red car next to a yellow house, side view" \
  "a purple arrow next to an orange sphere, side view" "a green pyramid next to a blue chair, front view"
