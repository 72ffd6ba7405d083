"""Camera motion: what the camera does, read from the optical flow, and whether it is what the prompt asks for.

Directions are the camera's, as prompts name them: ``pan_left`` = the camera turns left, so the content moves
right in the frame; ``pan_right`` the reverse; ``tilt_up`` = the camera turns up, the content moves down;
``tilt_down`` the reverse; ``zoom_in`` = the content grows (the view narrows); ``zoom_out`` = it shrinks;
``orbit_left`` = the camera travels to its left around a subject it keeps centred, turning right, so the subject
stays put while the background slides left (beyond the subject parallax moves with the camera); ``orbit_right`` the
reverse; ``static`` = none of these.

Per pair of consecutive frames (the flow of :func:`openwan.eval.bench.temporal.clip_flow`), a similarity model
(translation, zoom, roll) is fitted by RANSAC (:func:`openwan.curate.motion.fit_camera`) to the flow on a grid of
points, so moving objects do not pull it. Over the clip the camera's content motion is averaged into speeds:
``pan_width_per_s`` (content moving right > 0, frame widths per second), ``tilt_height_per_s`` (content moving down
> 0, frame heights per second), ``zoom_log_per_s`` (content growing > 0, natural log of the scale per second) and
``roll_rad_per_s``. A component is present when its speed reaches :data:`PAN_MIN` (pans and tilts) or
:data:`ZOOM_MIN` (zooms); the class is the present component that moves the frame's edges most (a zoom moves them
``zoom / 2`` widths per second), or ``static``. A horizontal move whose central box (the middle third each way)
moves less than :data:`ORBIT_CENTRE_SHARE` of the background's speed is an orbit. Flow alone cannot tell an orbit
from a pan that follows a subject and keeps it centred; both read as an orbit, and a prompt asking for the pan the
background shows is matched by either.
"""

from __future__ import annotations

import math
import re

import numpy as np

from openwan.curate.motion import fit_camera
from openwan.eval.bench.base import Dimension, Score, Video
from openwan.eval.bench.temporal import clip_flow, unmeasurable

CLASSES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "orbit_left",
           "orbit_right")
PAN_MIN = 0.03  # frame widths (heights for tilts) per second of camera motion for a pan (tilt) to count
ZOOM_MIN = 0.06  # natural log of the scale per second for a zoom to count (the edges move 0.03 widths/s)
ORBIT_CENTRE_SHARE = 0.3  # a centre moving less than this share of the background's horizontal speed: an orbit
GRID_STEP = 4  # flow pixels between the points the camera model is fitted on
RANSAC_THRESHOLD = 0.3  # flow pixels: points the model misses by more are moving objects
CENTRE = (1 / 3, 2 / 3)  # the central box, as shares of the width and of the height

_DIR = r"(?:\s+(?:slowly|quickly|gently|smoothly|to|the|towards|around|[a-z]+ly))*\s+"
# (pattern, the classes that satisfy it); patterns are matched on the lower-cased prompt.
REQUESTS: tuple[tuple[str, frozenset[str]], ...] = (
    (r"\bpan(?:s|ned|ning)?" + _DIR + r"left|\bleft(?:ward)?\s+pan|\bpan\w*\s+from\s+(?:the\s+)?right\s+to\b",
     frozenset({"pan_left"})),
    (r"\bpan(?:s|ned|ning)?" + _DIR + r"right|\bright(?:ward)?\s+pan|\bpan\w*\s+from\s+(?:the\s+)?left\s+to\b",
     frozenset({"pan_right"})),
    (r"\btilt(?:s|ed|ing)?" + _DIR + r"up(?:wards?)?\b", frozenset({"tilt_up"})),
    (r"\btilt(?:s|ed|ing)?" + _DIR + r"down(?:wards?)?\b", frozenset({"tilt_down"})),
    (r"\bzoom(?:s|ed|ing)?(?:\s+|-)in(?:to)?\b|\b(?:push(?:es|ing)?|doll(?:y|ies|ying))\s+in\b",
     frozenset({"zoom_in"})),
    (r"\bzoom(?:s|ed|ing)?(?:\s+|-)out\b|\b(?:pull(?:s|ing)?\s+(?:back|out)|doll(?:y|ies|ying)\s+out)\b",
     frozenset({"zoom_out"})),
    (r"\b(?:orbit\w*|circl(?:es|ing)\s+around)(?:\s+\w+){0,3}?\s+(?:to\s+(?:the\s+)?)?left\b",
     frozenset({"orbit_left"})),
    (r"\b(?:orbit\w*|circl(?:es|ing)\s+around)(?:\s+\w+){0,3}?\s+(?:to\s+(?:the\s+)?)?right\b",
     frozenset({"orbit_right"})),
    (r"\b(?:static|still|fixed|locked(?:-off)?|stationary|steady)\s+(?:camera|shot)\b|\bcamera\s+(?:is\s+|stays\s+|"
     r"remains\s+)?(?:static|still|fixed|stationary|motionless)\b|\bno camera (?:motion|movement)\b",
     frozenset({"static"})),
)
# Requests without a direction, used where no directed request of the same kind matched.
UNDIRECTED: tuple[tuple[str, frozenset[str]], ...] = (
    (r"\bcamera\s+(?:\w+ly\s+)?pans\b|\bpanning\b|\bpan(?:ning)?\s+shot\b", frozenset({"pan_left", "pan_right"})),
    (r"\bcamera\s+(?:\w+ly\s+)?tilts\b|\btilting\b", frozenset({"tilt_up", "tilt_down"})),
    (r"\bcamera\s+(?:\w+ly\s+)?zooms\b|\bzooming\b", frozenset({"zoom_in", "zoom_out"})),
    (r"\borbit(?:s|ing)?\b|\bcircles\s+around\b", frozenset({"orbit_left", "orbit_right"})),
)


def requested_motion(prompt: str | None) -> list[frozenset[str]]:
    """The camera motions ``prompt`` asks for: one set of acceptable classes per request (``{"pan_left"}``; a pan
    without direction ``{"pan_left", "pan_right"}``); empty when it asks for none."""
    if not prompt:
        return []
    text = prompt.lower()
    groups = [classes for pattern, classes in REQUESTS if re.search(pattern, text)]
    for pattern, classes in UNDIRECTED:
        if not any(g <= classes for g in groups) and re.search(pattern, text):
            groups.append(classes)
    return groups


def camera_motion(video: Video) -> dict:
    """The camera's speeds (units in the module docstring), the ``centre_pan_width_per_s`` of the central box, the
    present components ``moves`` and the ``camera_class`` of ``video`` (at least 2 frames)."""
    cf = clip_flow(video)
    h, w = cf.planes.shape[1:]
    rows, cols = cf.interior()
    gy, gx = np.mgrid[rows.start:rows.stop:GRID_STEP, cols.start:cols.stop:GRID_STEP]
    gx, gy = gx.ravel(), gy.ravel()
    centred = np.stack([gx - (w - 1) / 2, gy - (h - 1) / 2], 1).astype(np.float64)  # [N, 2]
    centre = ((gx >= CENTRE[0] * w) & (gx <= CENTRE[1] * w) & (gy >= CENTRE[0] * h) & (gy <= CENTRE[1] * h))
    sums = np.zeros(5)  # tx, ty, log scale, angle, centre tx (flow pixels, per pair, summed)
    for f in cf.flows:
        fg = f[gy, gx].astype(np.float64)  # [N, 2]
        m = fit_camera(centred, fg, "similarity", RANSAC_THRESHOLD)
        scale = math.hypot(m[0, 0], m[1, 0])
        sums += [m[0, 2], m[1, 2], math.log(max(scale, 1e-6)), math.atan2(m[1, 0], m[0, 0]),
                 float(np.median(fg[centre, 0])) if centre.any() else m[0, 2]]
    seconds = len(cf.flows) / cf.fps
    pan, tilt = sums[0] / w / seconds, sums[1] / h / seconds
    zoom, roll, centre_pan = sums[2] / seconds, sums[3] / seconds, sums[4] / w / seconds
    edge = {}  # present component -> how far it moves the frame's edges, widths (heights) per second
    if abs(pan) >= PAN_MIN:
        edge["pan_left" if pan > 0 else "pan_right"] = abs(pan)
    if abs(tilt) >= PAN_MIN:
        edge["tilt_up" if tilt > 0 else "tilt_down"] = abs(tilt)
    if abs(zoom) >= ZOOM_MIN:
        edge["zoom_in" if zoom > 0 else "zoom_out"] = abs(zoom) / 2
    moves = sorted(edge, key=edge.get, reverse=True)
    label = moves[0] if moves else "static"
    if label.startswith("pan") and abs(centre_pan) < ORBIT_CENTRE_SHARE * abs(pan):
        label = "orbit_left" if pan < 0 else "orbit_right"  # the background slides the way the camera travels
        moves.insert(0, label)
    return {"camera_class": label, "moves": moves or ["static"], "pan_width_per_s": float(pan),
            "tilt_height_per_s": float(tilt), "zoom_log_per_s": float(zoom), "roll_rad_per_s": float(roll),
            "centre_pan_width_per_s": float(centre_pan)}


class CameraMotion(Dimension):
    """Whether the camera moves as the prompt asks: 1 when every camera motion the prompt requests (parsed by
    :func:`requested_motion`) is among the motions the flow shows (:func:`camera_motion`; a request for a static
    camera needs class ``static``), else 0. Not applicable when the prompt asks for no camera motion (the class
    is still reported) or the video has a single frame. Details: ``camera_class``, ``moves``, the speeds, and
    ``requested``."""

    name = "camera_motion"
    stands_for = "VBench camera motion; Wan-Bench camera control"
    needs = ("prompt",)

    def score(self, video: Video) -> Score:
        if why := unmeasurable(video):
            return Score(None, not_applicable=why)
        details = camera_motion(video)
        groups = requested_motion(video.prompt)
        if not groups:
            return Score(None, details, not_applicable=(
                "the prompt asks for no camera motion (pan, tilt, zoom, orbit or a static camera)."
                if video.prompt else "the video has no prompt to say which camera motion it should show."))
        details["requested"] = [sorted(g) for g in groups]
        ok = all(g & set(details["moves"]) for g in groups)
        return Score(1.0 if ok else 0.0, details)


__all__ = ["CameraMotion", "camera_motion", "requested_motion", "CLASSES", "PAN_MIN", "ZOOM_MIN",
           "ORBIT_CENTRE_SHARE"]
