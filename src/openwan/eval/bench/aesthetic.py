"""Aesthetic quality (VBench's aesthetic quality): the LAION aesthetic predictor on the video's frames.

The predictor is ``openwan curate``'s (:class:`openwan.curate.aesthetic.AestheticStage`: CLIP ViT-L/14 image
embeddings, L2-normalised, into the LAION MLP head), from :attr:`BenchWeights.aesthetic_clip_path` and
:attr:`BenchWeights.aesthetic_head_path`. It rates about 1 (ugly) to 10 (beautiful); as VBench does, the value is
the mean rating over the frames divided by 10 and clipped to [0, 1]. :data:`FRAMES` key frames are rated (the
centres of equal parts of the clip).
"""

from __future__ import annotations

from openwan.eval.bench.base import BenchWeights, Dimension, Score, Video

FRAMES = 8  # key frames rated per video
NOT_MEASURED = ("not measured: give the LAION aesthetic predictor's weights: --aesthetic-clip (a CLIP ViT-L/14 "
                "transformers folder, openai/clip-vit-large-patch14) and --aesthetic-head "
                "(sac+logos+ava1-l14-linearMSE.pth)")


class AestheticQuality(Dimension):
    """The LAION predictor's mean rating over key frames / 10, in [0, 1]; the rating itself in ``details``."""

    name = "aesthetic_quality"
    stands_for = "VBench aesthetic quality (LAION aesthetic predictor)"
    needs = ("LAION aesthetic predictor weights",)

    def __init__(self, weights: BenchWeights | None = None):
        super().__init__(weights)
        self._stage = None

    def available(self) -> str | None:
        if not (self.weights.aesthetic_clip_path and self.weights.aesthetic_head_path):
            return NOT_MEASURED
        return None

    def setup(self) -> None:
        """Load CLIP and the head (ValueError when the given files are not the predictor's)."""
        if self._stage is not None or self.available():
            return
        from openwan.curate.aesthetic import AestheticConfig, AestheticStage

        device = self.weights.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        stage = AestheticStage(AestheticConfig(enabled=True, clip_path=self.weights.aesthetic_clip_path,
                                               head_path=self.weights.aesthetic_head_path, frames=FRAMES,
                                               device=device))
        stage.setup()
        self._stage = stage

    def score(self, video: Video) -> Score:
        missing = self.available()
        if missing:
            return Score(None, not_measured=missing)
        from openwan.curate.embed import key_frame_indices

        self.setup()
        frames = video.analysis_frames()
        picks = key_frame_indices(len(frames), FRAMES)
        ratings = self._stage.score_frames(frames[picks])
        rating = float(ratings.mean())
        return Score(round(min(max(rating / 10, 0.0), 1.0), 6),
                     details={"laion_rating_1_to_10": round(rating, 4),
                              "laion_rating_min": round(float(ratings.min()), 4),
                              "laion_rating_max": round(float(ratings.max()), 4), "frames": picks})


__all__ = ["AestheticQuality", "NOT_MEASURED", "FRAMES"]
