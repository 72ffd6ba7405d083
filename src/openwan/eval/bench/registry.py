"""Every bench dimension by name, imported on demand (a run that skips the CLIP dimensions never imports them)."""

from __future__ import annotations

import importlib

from openwan.eval.bench.base import BenchWeights, Dimension

# name -> "module:Class" under openwan.eval.bench
DIMENSIONS: dict[str, str] = {
    "temporal_flickering": "temporal:TemporalFlickering",
    "motion_smoothness": "temporal:MotionSmoothness",
    "dynamic_degree": "temporal:DynamicDegree",
    "large_motion": "temporal:LargeMotion",
    "pixel_stability": "temporal:PixelStability",
    "camera_motion": "camera:CameraMotion",
    "imaging_quality": "imaging:ImagingQuality",
    "text_accuracy": "text:TextAccuracy",
    "subject_consistency": "semantic:SubjectConsistency",
    "background_consistency": "semantic:BackgroundConsistency",
    "prompt_alignment": "semantic:PromptAlignment",
    "aesthetic_quality": "aesthetic:AestheticQuality",
    "imaging_quality_musiq": "musiq:MusiqQuality",
    "demo_colour": "demo:DemoColour",
    "demo_shape": "demo:DemoShape",
    "demo_motion": "demo:DemoMotion",
}


def dimension_class(name: str) -> type[Dimension]:
    """The class of dimension ``name``; ValueError listing the known names for an unknown one."""
    if name not in DIMENSIONS:
        raise ValueError(f"unknown bench dimension {name!r}; choose from: {', '.join(DIMENSIONS)}.")
    module, cls = DIMENSIONS[name].split(":")
    return getattr(importlib.import_module(f"openwan.eval.bench.{module}"), cls)


def build_dimensions(names: list[str] | None = None, weights: BenchWeights | None = None) -> list[Dimension]:
    """The dimensions ``names`` (None: every one) built with ``weights``; unknown names refused before any is
    built."""
    names = list(DIMENSIONS) if names is None else list(names)
    classes = [dimension_class(n) for n in names]
    return [cls(weights) for cls in classes]
