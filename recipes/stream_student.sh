#!/usr/bin/env bash
# The bundled model's streaming student (docs/streaming.md): a staircase-fine-tuned streaming teacher, distilled
# into two DiT evaluations per latent frame of video, written into the release's stream_model/ folder.
#
#   bash recipes/stream_student.sh [WORK]            # default WORK: runs/stream-student
#
# Environment: RELEASE (default: the bundled model), CACHE (existing latent + text caches of the release's
# encoders, e.g. the demo recipe's WORK/cache; default: synthesise and encode CLIPS clips), CAPTIONS (templates or
# varied, as the release was trained on), TEACHER_STEPS (3000 by default), STUDENT_STEPS (0: ship the staircase
# teacher itself), GUIDE_SCALE (the guidance folded into the student), OBJECTIVE (distill.objective: trajectory by
# default, or consistency), JUMPS (the student's sub-steps per queue shift, 2 by default),
# ANCHOR (the share of the teacher's windows that follow a clean anchor frame, 0.8 by default; above 0 the student
# streams anchored, 0 makes an unanchored one), DECODER_STEPS (the release's VAE decoder fine-tuned on objects that
# cross the frame's edges, encoder frozen; 0 keeps the release's).
# Each step skips itself when its output exists.
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=${1:-runs/stream-student}
COMPILE=$(command -v c++ >/dev/null && $PY -c "import os, sysconfig
print(1 if os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else '')" || true)
mkdir -p "$WORK"
$PY "$(dirname "$0")/stream_student.py" "$WORK" ${RELEASE:+--release "$RELEASE"} ${CACHE:+--cache "$CACHE"} \
  ${CLIPS:+--clips "$CLIPS"} ${CAPTIONS:+--captions "$CAPTIONS"} ${TEACHER_STEPS:+--teacher-steps "$TEACHER_STEPS"} \
  ${STUDENT_STEPS:+--student-steps "$STUDENT_STEPS"} ${GUIDE_SCALE:+--guide-scale "$GUIDE_SCALE"} \
  ${OBJECTIVE:+--objective "$OBJECTIVE"} ${JUMPS:+--jumps-per-shift "$JUMPS"} ${ANCHOR:+--anchor "$ANCHOR"} ${DECODER_STEPS:+--decoder-steps "$DECODER_STEPS"} \
  ${COMPILE:+--compile} 2>&1 | tee -a "$WORK/recipe.log"
