#!/usr/bin/env bash
# The VAE compression study (docs/vae_compression.md): at one latent budget (5x8x8x16 = 5,120 numbers per 17-frame
# 64x64 clip), train (a) the Wan2.1-style VAE (preset demo: 4x8x8, z16), (b) the Wan2.2-style one (demo-22:
# patchify + residual shortcuts, 4x16x16, z64) and (c) a DC-AE-style one (demo-dcae: one more residual level,
# 4x32x32, z256), each directly in 3D with the same steps, batch and loss; optionally a denoising decoder for (b)
# (LTX-Video's idea); then recipes/vae_compression.py: reconstruction, coding speed, and a DiT of the same preset,
# steps and batch on each latent space with `openwan eval prompts`.
# Usage: bash recipes/vae_compression.sh [WORK_DIR]   (default: runs/vae-study). Sizes come from env variables, so a
# short and a full run use this same script. Every step skips itself when its output exists.
set -euo pipefail
OPENWAN=${OPENWAN:-".venv/bin/python -m openwan"}
PY=${PY:-.venv/bin/python}
WORK=${1:-runs/vae-study}
# The demo recipe's work folder: its data/train clips are trained on, its text encoder and text cache are copied.
# Without one (no SOURCE given and no runs/demo-model), WORK/source is built with just those parts, as the recipe
# builds them (about 10 minutes: the clips, 2,000 text pre-training steps, the text cache).
if [ -z "${SOURCE:-}" ]; then
  SOURCE=runs/demo-model
  [ -f "$SOURCE/cache/text_index.json" ] || SOURCE="$WORK/source"
fi
ARMS=${ARMS:-"a b c"}
VAE_STEPS=${VAE_STEPS:-800}
VAE_BATCH=${VAE_BATCH:-8}
VAE_FRAMES=${VAE_FRAMES:-5}
VAE_SIZE=${VAE_SIZE:-64}
VAE_LR=${VAE_LR:-5e-4}
# > 0: each VAE first trains VAE_IMAGE_STEPS on single frames (batch VAE_IMAGE_BATCH, lr 5e-4), the 3D causal VAE's
# image path, as cheap as the demo recipe's 2D image stage; the clip phase (VAE_STEPS at VAE_LR) then starts from its
# newest-frame taps (--per-frame-start: the taps single frames never trained are zeroed, as inflation leaves them).
VAE_IMAGE_STEPS=${VAE_IMAGE_STEPS:-0}
VAE_IMAGE_BATCH=${VAE_IMAGE_BATCH:-16}
NOISY_STEPS=${NOISY_STEPS:-0}        # > 0: also fine-tune arm b's decoder on noisy latents (--decode-noise)
NOISY_RANGE=${NOISY_RANGE:-"0 0.1"}
RECON_CLIPS=${RECON_CLIPS:-36}
CACHE_CLIPS=${CACHE_CLIPS:-4320}
DIT_STEPS=${DIT_STEPS:-800}
DIT_BATCH=${DIT_BATCH:-16}
DIT_PRESET=${DIT_PRESET:-demo-small}
EVAL_SEEDS=${EVAL_SEEDS:-0}
EVAL_STEPS=${EVAL_STEPS:-20}
MANIFEST="$SOURCE/data/train/manifest.jsonl"
mkdir -p "$WORK"
if [ "$SOURCE" = "$WORK/source" ]; then
  $PY "$(dirname "$0")/vae_compression.py" "$WORK" --manifest "$MANIFEST" --text-source "$SOURCE" --prepare-source
fi
[ -f "$MANIFEST" ] || { echo "no training manifest at $MANIFEST; run recipes/demo_model.sh first or set SOURCE." >&2; exit 2; }

# REUSE=FOLDER: another study folder whose trained parts (ARM/vae-image, ARM/vae, ARM/cache) each arm links when
# WORK lacks them, so that a DiT of another length trains on the same VAEs and latents and no VAE step runs.
if [ -n "${REUSE:-}" ]; then
  for arm in $ARMS; do
    mkdir -p "$WORK/$arm"
    for part in vae-image vae cache; do
      if [ -e "$REUSE/$arm/$part" ] && [ ! -e "$WORK/$arm/$part" ]; then
        ln -s "$(readlink -f "$REUSE/$arm/$part")" "$WORK/$arm/$part"
      fi
    done
  done
fi

preset_of() { case "$1" in a) echo demo ;; b) echo demo-22 ;; c) echo demo-dcae ;;
  *) echo "ARMS holds a, b and c; got '$1'." >&2; exit 2 ;; esac; }

# Every VAE: a fresh 3D VAE (--fresh-3d: the patchified residual designs have no 2D image stage, so all three skip
# it alike), 10·MSE + KL + the latent colour probe, AdamW at VAE_LR with a cosine to 5%.
for arm in $ARMS; do
  preset=$(preset_of "$arm")
  start=(--fresh-3d --preset "$preset")
  if [ "$VAE_IMAGE_STEPS" -gt 0 ]; then
    [ -f "$WORK/$arm/vae-image/Wan2.1_VAE.pth" ] || $OPENWAN train-vae --stage 2 "${start[@]}" --manifest "$MANIFEST" \
      --out "$WORK/$arm/vae-image" --size "$VAE_SIZE" --frames 1 --batch-size "$VAE_IMAGE_BATCH" \
      --steps "$VAE_IMAGE_STEPS" --lr 5e-4 --warmup-steps $((VAE_IMAGE_STEPS / 40)) --min-lr-ratio 0.05 \
      --l1-weight 0 --l2-weight 10 --colour-weight 10 --log-every "${LOG_EVERY:-20}" --save-every 200 --workers 1
    start=(--init "$WORK/$arm/vae-image/Wan2.1_VAE.pth" --per-frame-start)
  fi
  if [ ! -f "$WORK/$arm/vae/Wan2.1_VAE.pth" ]; then
    $OPENWAN train-vae --stage 2 "${start[@]}" --manifest "$MANIFEST" --out "$WORK/$arm/vae" \
      --size "$VAE_SIZE" --frames "$VAE_FRAMES" --batch-size "$VAE_BATCH" --steps "$VAE_STEPS" --lr "$VAE_LR" \
      --warmup-steps $((VAE_STEPS / 20)) --min-lr-ratio 0.05 --l1-weight 0 --l2-weight 10 --colour-weight 10 \
      --log-every "${LOG_EVERY:-20}" --save-every 100 --workers 1
  fi
done

# Optional: arm b's decoder fine-tuned on latents noised to a level in NOISY_RANGE (encoder frozen, so the latents
# and a DiT trained on them stay valid), and, as its control, the same fine-tune on clean latents.
if [ "$NOISY_STEPS" -gt 0 ] && [ -f "$WORK/b/vae/Wan2.1_VAE.pth" ]; then
  for kind in plain noisy; do
    [ -f "$WORK/b/vae-$kind/Wan2.1_VAE.pth" ] && continue
    noise=(); [ "$kind" = noisy ] && read -r -a noise <<< "--decode-noise $NOISY_RANGE"
    $OPENWAN train-vae --stage 2 --freeze-encoder "${noise[@]}" --init "$WORK/b/vae/Wan2.1_VAE.pth" \
      --manifest "$MANIFEST" --out "$WORK/b/vae-$kind" --size "$VAE_SIZE" --frames "$VAE_FRAMES" \
      --batch-size "$VAE_BATCH" --steps "$NOISY_STEPS" --lr 1e-4 --min-lr-ratio 0.05 --l1-weight 0 --l2-weight 10 \
      --log-every 20 --save-every 200 --workers 1
  done
fi

# shellcheck disable=SC2086
$PY "$(dirname "$0")/vae_compression.py" "$WORK" --manifest "$MANIFEST" --text-source "$SOURCE" --arms $ARMS \
  --recon-clips "$RECON_CLIPS" --coding-times --cache-clips "$CACHE_CLIPS" --dit-steps "$DIT_STEPS" --dit-batch-size "$DIT_BATCH" \
  --dit-preset "$DIT_PRESET" --eval-seeds $EVAL_SEEDS --eval-steps "$EVAL_STEPS" ${DIT_COMPILE:+--compile}
