#!/usr/bin/env bash
# Reproduce the bundled demo model (src/openwan/weights/openwan-demo) from scratch on a CPU, with openwan's own tools:
#   synthetic data -> VAE (2D, then inflated 3D, then its decoder alone) -> latent/text caches -> DiT with flow
#   matching -> release folder. docs/demo_model.md gives each stage's time and the model's evaluation.
# Usage: bash recipes/demo_model.sh [WORK_DIR]   (default: runs/demo-model). Override sizes with env variables;
# OUT=DIR writes the release folder there instead of the bundled model's folder. CAPTIONS=templates captions the
# training clips with the dataset's templates alone instead of its richer grammar (`--captions varied`, the default).
set -euo pipefail
OPENWAN=${OPENWAN:-".venv/bin/python -m openwan"}
PY=${PY:-.venv/bin/python}
WORK=${1:-runs/demo-model}
NUM_CLIPS=${NUM_CLIPS:-4320}
VAE1_STEPS=${VAE1_STEPS:-2000}
VAE2_STEPS=${VAE2_STEPS:-400}
VAE_DECODER_STEPS=${VAE_DECODER_STEPS:-200}
VAE_WIDE_DIM=${VAE_WIDE_DIM:-24}
VAE_WIDE_STEPS=${VAE_WIDE_STEPS:-0}
VAE_COLOUR_WEIGHT=${VAE_COLOUR_WEIGHT:-10}
# varied (the bundled model's): a quarter of the captions from the templates, the rest from a grammar of other verbs,
# direction phrases, adverbs, word orders and styles; templates: the templates alone (the clips themselves are the
# same). Exported: the text encoder's pre-training (demo_text.py, run by demo_model.py) reads its corpus's phrasing.
CAPTIONS=${CAPTIONS:-varied}
case "$CAPTIONS" in
  templates|varied) ;;
  *) echo "CAPTIONS must be templates or varied; got '$CAPTIONS'." >&2; exit 2 ;;
esac
export CAPTIONS
# torch.compile on a CPU builds C++ against Python's headers: on by default only where both are found.
DIT_COMPILE=${DIT_COMPILE-$(command -v c++ >/dev/null && $PY -c "import os, sysconfig
print(1 if os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else '')" || true)}
mkdir -p "$WORK"
START=$SECONDS
stage() { printf '[%s] %3d:%02d  %s\n' "$(date +%T)" $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)) "$1"; }

# Reversible paths: where an object starts never tells which way it goes, so only the prompt can.
# WORK/data/captions records the captions' kind (none recorded: templates); data of another kind is refused.
DATA_CAPTIONS=$(cat "$WORK/data/captions" 2>/dev/null || echo templates)
if [ -f "$WORK/data/train/manifest.jsonl" ] && [ "$DATA_CAPTIONS" != "$CAPTIONS" ]; then
  echo "$WORK/data holds $DATA_CAPTIONS captions, not $CAPTIONS: use another work folder (the clips are the same," \
    "so vae1/, vae2/ and vae-decoder/ may be copied into it)." >&2
  exit 2
fi
stage "data"
[ -f "$WORK/data/train/manifest.jsonl" ] || $OPENWAN data synth --out "$WORK/data/train" --num "$NUM_CLIPS" --seed 0 \
  --paths reversible --captions "$CAPTIONS"
[ -f "$WORK/data/heldout/manifest.jsonl" ] || $OPENWAN data synth --out "$WORK/data/heldout" --num 72 --seed 1 \
  --split heldout --paths reversible --captions "$CAPTIONS"
echo "$CAPTIONS" > "$WORK/data/captions"

# Every VAE step trains on the squared error alone (--l1-weight 0): PSNR is what it is measured by.
# Stages 1 and 2 also train a latent colour probe (--colour-weight): a linear map must read each latent cell's mean
# colour from the posterior mean, which keeps flat coloured areas from decoding grey.
# VAE stage 1: a 2D image VAE on single frames, cosine-decayed lr.
# Stage 2: inflated to the 3D causal VAE and trained on 9-frame clips (1 + 4 + 4: the second 4-frame chunk runs, as
# the rest of a clip does, on a cache filled by a full chunk before it), at lr 1e-4 so that every colour keeps its
# quality.
stage "VAE stage 1"
[ -f "$WORK/vae1/image_vae.pth" ] || $OPENWAN train-vae --stage 1 --manifest "$WORK/data/train/manifest.jsonl" \
  --out "$WORK/vae1" --preset demo --size 64 --frames 1 --batch-size 16 --steps "$VAE1_STEPS" --lr 5e-4 \
  --warmup-steps 50 --min-lr-ratio 0.05 --l1-weight 0 --l2-weight 10 --colour-weight "$VAE_COLOUR_WEIGHT" \
  --log-every 100 --save-every 600 --workers 1
stage "VAE stage 2"
[ -f "$WORK/vae2/Wan2.1_VAE.pth" ] || $OPENWAN train-vae --stage 2 --manifest "$WORK/data/train/manifest.jsonl" \
  --out "$WORK/vae2" --init "$WORK/vae1/image_vae.pth" --size 64 --frames 9 --batch-size 4 --steps "$VAE2_STEPS" \
  --lr 1e-4 --warmup-steps 20 --min-lr-ratio 0.1 --l1-weight 0 --l2-weight 10 --colour-weight "$VAE_COLOUR_WEIGHT" \
  --log-every 50 --save-every 200 --workers 1
# Then the decoder alone, at a fresh learning rate: the encoder is frozen, so the latents the DiT learns from are
# stage 2's, byte for byte, and the release ships this sharper decoder with them. VAE_DECODER_STEPS=0 skips it (and
# the optional widening below, which starts from it).
stage "VAE decoder"
if [ "$VAE_DECODER_STEPS" -gt 0 ] && [ ! -f "$WORK/vae-decoder/Wan2.1_VAE.pth" ]; then
  $OPENWAN train-vae --stage 2 --freeze-encoder \
    --manifest "$WORK/data/train/manifest.jsonl" --out "$WORK/vae-decoder" --init "$WORK/vae2/Wan2.1_VAE.pth" \
    --size 64 --frames 9 --batch-size 4 --steps "$VAE_DECODER_STEPS" --lr 1e-4 --warmup-steps 20 \
    --min-lr-ratio 0.05 --l1-weight 0 --l2-weight 10 --log-every 50 --save-every 250 --workers 1
fi

# Optional (VAE_WIDE_STEPS > 0, e.g. 600): that decoder widened from 16 to VAE_WIDE_DIM base channels (train-vae
# --decoder-dim: the added channels start quiet, so it begins where the decoder step ended) and trained on, same
# encoder again.
if [ "$VAE_WIDE_STEPS" -gt 0 ] && [ "$VAE_DECODER_STEPS" -gt 0 ] && [ ! -f "$WORK/vae-wide/Wan2.1_VAE.pth" ]; then
  $OPENWAN train-vae --stage 2 --freeze-encoder --manifest "$WORK/data/train/manifest.jsonl" --out "$WORK/vae-wide" \
    --init "$WORK/vae-decoder/Wan2.1_VAE.pth" --decoder-dim "$VAE_WIDE_DIM" --size 64 --frames 9 --batch-size 4 \
    --steps "$VAE_WIDE_STEPS" --lr 1e-4 --warmup-steps 50 --min-lr-ratio 0.05 --l1-weight 0 --l2-weight 10 \
    --log-every 50 --save-every 150 --workers 1
fi

# The rest is recipes/demo_model.py: the text encoder (pre-trained on training captions by span corruption and a
# vocabulary objective that makes synonyms alike — TEXT_VOCABULARY_WEIGHT, 1 by default, 0 for span corruption
# alone — then frozen), the caches, the DiT and the release folder. The DiT trains DIT_STEPS on a cosine schedule,
# 30% of its samples with the first latent frame given clean (Wan2.2 TI2V-style); DIT_EXTEND_TO > DIT_STEPS then
# resumes it with the schedule stretched (a warm restart).
# The DiT ships as two, Wan2.2 A14B-style experts (DIT_BOUNDARY, 0.75 by default): the DiT (demo-small, batch 16, lr
# 1e-3, shift 2, DIT_STEPS 3,000) serves the noise levels below the boundary, and a copy of it fine-tuned
# DIT_HIGH_EXPERT_STEPS more (1,500) on the levels above it serves those; DIT_BOUNDARY=0 trains one DiT.
# DIT_LOGIT_STD, DIT_MIDDLE_SHARE (a share of the DiT's samples at shift 1) and DIT_HIGH_STEPS (a first stage at high
# noise levels, with DIT_BOUNDARY=0) change how the DiT's noise levels are drawn.
# DIT_COMPILE compiles the DiT's blocks with torch.compile (faster steps on a CPU): on by default where a C++ compiler
# and Python's headers are found, DIT_COMPILE= turns it off. DIT_SEED picks the DiT run's seed (0 by default) — a DiT
# already in WORK/dit resumes as it was, so move that folder away to train another seed on the same caches.
stage "text encoder, caches, DiT, release (demo_model.py)"
$PY "$(dirname "$0")/demo_model.py" "$WORK" ${DIT_STEPS:+--dit-steps "$DIT_STEPS"} ${DIT_PRESET:+--dit-preset "$DIT_PRESET"} \
  ${DIT_BATCH:+--dit-batch-size "$DIT_BATCH"} ${DIT_LOGIT_STD:+--dit-logit-std "$DIT_LOGIT_STD"} \
  ${DIT_SHIFT:+--dit-shift "$DIT_SHIFT"} ${DIT_LR:+--dit-lr "$DIT_LR"} \
  ${DIT_BOUNDARY:+--dit-boundary "$DIT_BOUNDARY"} ${DIT_HIGH_EXPERT_STEPS:+--dit-high-expert-steps "$DIT_HIGH_EXPERT_STEPS"} \
  ${DIT_HIGH_STEPS:+--dit-high-steps "$DIT_HIGH_STEPS"} \
  ${DIT_MIDDLE_SHARE:+--dit-middle-share "$DIT_MIDDLE_SHARE"} \
  ${DIT_EXTEND_TO:+--dit-extend-to "$DIT_EXTEND_TO"} ${DIT_COMPILE:+--compile} ${DIT_SEED:+--dit-seed "$DIT_SEED"} \
  ${TEXT_VOCABULARY_WEIGHT:+--text-vocabulary-weight "$TEXT_VOCABULARY_WEIGHT"} ${OUT:+--out "$OUT"}
stage "done"
