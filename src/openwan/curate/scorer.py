"""The paper's expert scorer: cluster the clips' embeddings, have a person score a small sample per cluster, train a
small regressor on those scores, and score every clip with it.

Workflow (each step a function the CLI calls):

1. :func:`cluster_embeddings` (through the ``clusters`` stage) gives every clip a ``cluster_id``.
2. :func:`label_sample` picks ``per_cluster`` clips of each cluster; :func:`write_label_sheet` writes them to a CSV
   with an empty ``score`` column for a person to fill.
3. :func:`read_labels` reads the filled sheet; :func:`train_scorer` fits a ridge regression (or a small MLP) from
   ``embed_vector`` (and optional weight-free measure columns) to the scores, with cross-validated Spearman and
   MAE; :meth:`ExpertScorer.save` writes it as safetensors + JSON (no pickle).
4. The ``scorer`` stage (:class:`ScorerStage`, ``scorer.path``) loads it and scores every clip: ``scorer_score``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.fileio import atomic_write

SHEET_COLUMNS = ("clip_id", "cluster_id", "source", "start", "end", "score")
WEIGHTS_FILE = "scorer.safetensors"
META_FILE = "scorer.json"
FORMAT = "openwan-expert-scorer-1"


# ------------------------------------------------------------------------------------------------- clusters, sheets


def cluster_embeddings(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means cluster labels (int64 [n], 0..k'-1) of vectors [n, D]; k is capped by the number of distinct vectors,
    and the same vectors and seed give the same labels."""
    from sklearn.cluster import KMeans

    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"cluster_embeddings takes vectors shaped [n, D]; got {vectors.shape}.")
    if k < 1:
        raise ValueError(f"k must be >= 1 clusters; got {k}.")
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, len(np.unique(vectors, axis=0)))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors)
    # Number clusters by their first member, so the ids do not depend on k-means' internal order.
    first = {}
    for label in km.labels_:
        first.setdefault(int(label), len(first))
    return np.array([first[int(label)] for label in km.labels_], dtype=np.int64)


def label_sample(rows: list[dict[str, Any]], per_cluster: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``per_cluster`` clips of each cluster for a person to score, chosen at random with ``seed``: dicts of
    clip_id, cluster_id, source, start, end, sorted by cluster then clip_id. Rows need ``cluster_id`` (the clusters
    stage); rows without one are left out."""
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be >= 1 clips; got {per_cluster}.")
    if rows and all(r.get("cluster_id") is None for r in rows):
        raise ValueError("no row has a cluster_id; run the curation with the clusters stage enabled first.")
    by_cluster: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("cluster_id") is not None:
            by_cluster.setdefault(int(row["cluster_id"]), []).append(row)
    rng = np.random.default_rng(seed)
    out = []
    for cluster in sorted(by_cluster):
        members = sorted(by_cluster[cluster], key=lambda r: str(r["clip_id"]))
        picks = sorted(rng.choice(len(members), size=min(per_cluster, len(members)), replace=False))
        out += [{"clip_id": str(members[i]["clip_id"]), "cluster_id": cluster, "source": members[i].get("source"),
                 "start": members[i].get("start"), "end": members[i].get("end")} for i in picks]
    return out


def write_label_sheet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the clips to label (from :func:`label_sample`) as a CSV with an empty ``score`` column; returns the
    path. Written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SHEET_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{c: row.get(c) for c in SHEET_COLUMNS[:-1]}, "score": ""})

    def write(tmp: str) -> None:
        Path(tmp).write_text(buffer.getvalue(), encoding="utf-8")

    atomic_write(path, write, suffix=".csv")
    return Path(path)


def read_labels(path: str | Path) -> dict[str, float]:
    """The scores a person wrote in a label sheet: {clip_id: score}. Rows with an empty score are skipped (not
    labelled); a score that is not a finite number, or a clip labelled twice with different scores, is a
    ValueError naming the row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"label sheet {path} does not exist; write one with write_label_sheet (label-sheet).")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"clip_id", "score"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"label sheet {path} has no {' or '.join(sorted(missing))} column; it needs clip_id "
                             f"and score.")
        labels: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            text = (row.get("score") or "").strip()
            if not text:
                continue
            clip_id = (row.get("clip_id") or "").strip()
            try:
                score = float(text)
            except ValueError:
                score = math.nan
            if not clip_id or not math.isfinite(score):
                raise ValueError(f"label sheet {path} line {line} (clip {clip_id or '?'}): score {text!r} is not a "
                                 f"finite number; write a number or leave it empty.")
            if clip_id in labels and labels[clip_id] != score:
                raise ValueError(f"label sheet {path} line {line}: clip {clip_id} is scored twice "
                                 f"({labels[clip_id]} and {score}); keep one.")
            labels[clip_id] = score
    return labels


# ------------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainScorerConfig:
    """How :func:`train_scorer` fits: ``model`` ridge (``alpha``) or a small MLP (``hidden`` units, ``alpha`` its
    L2), ``measures`` extra numeric row columns used beside ``embed_vector`` (e.g. ``quality_sharpness``),
    ``folds`` for the cross-validated metrics, ``seed``."""

    model: Literal["ridge", "mlp"] = "ridge"
    alpha: float = 1.0
    hidden: int = 64
    measures: tuple[str, ...] = ()
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"train_scorer alpha must be >= 0; got {self.alpha}.")
        if self.hidden < 1:
            raise ValueError(f"train_scorer hidden must be >= 1; got {self.hidden}.")
        if self.folds < 2:
            raise ValueError(f"train_scorer folds must be >= 2; got {self.folds}.")


class ExpertScorer:
    """A trained expert scorer: standardised features (``embed_vector`` then ``measures``) -> a score in the
    labels' units. Prediction is plain numpy, so a saved and reloaded scorer gives identical scores."""

    def __init__(self, embed_model: str, measures: tuple[str, ...], dim: int, mean: np.ndarray, scale: np.ndarray,
                 layers: list[tuple[np.ndarray, np.ndarray]], meta: dict[str, Any] | None = None):
        self.embed_model, self.measures, self.dim = embed_model, tuple(measures), int(dim)
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in layers]
        self.meta = dict(meta or {})

    @property
    def feature_names(self) -> list[str]:
        """Names of the input features, in order."""
        return [f"embed_vector[{i}]" for i in range(self.dim)] + list(self.measures)

    def features(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """The feature matrix [n, dim + measures] of rows; a ValueError names a row whose embedding comes from
        another embedder or lacks a column."""
        return _features(rows, self.embed_model, self.measures, self.dim)

    def predict(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Scores (float64 [n]) of rows."""
        return self.predict_features(self.features(rows))

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Scores of a feature matrix [n, F]."""
        h = (np.asarray(x, np.float64) - self.mean) / self.scale
        for k, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if k < len(self.layers) - 1:
                h = np.maximum(h, 0.0)  # ReLU between layers
        return h[:, 0]

    def save(self, folder: str | Path) -> Path:
        """Write the scorer to ``folder`` (scorer.safetensors: scaler and layers; scorer.json: features, embedder,
        metrics); returns the folder. Both files written atomically."""
        from safetensors.numpy import save_file

        from openwan.fileio import atomic_write

        folder = Path(folder)
        tensors = {"mean": self.mean, "scale": self.scale}
        for k, (w, b) in enumerate(self.layers):
            tensors[f"layers.{k}.weight"], tensors[f"layers.{k}.bias"] = w, b
        meta = {"format": FORMAT, "embed_model": self.embed_model, "measures": list(self.measures), "dim": self.dim,
                "feature_names": self.feature_names, "layers": len(self.layers), **self.meta}
        atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in
                                                                  tensors.items()}, tmp), suffix=".safetensors")
        atomic_write(folder / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"),
                     suffix=".json")
        return folder


def load_scorer(folder: str | Path) -> ExpertScorer:
    """The :class:`ExpertScorer` saved in ``folder`` by :meth:`ExpertScorer.save`."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    weights, meta_path = folder / WEIGHTS_FILE, folder / META_FILE
    if not weights.is_file() or not meta_path.is_file():
        raise ValueError(f"{folder} holds no expert scorer ({WEIGHTS_FILE} and {META_FILE}); train one with "
                         f"openwan curate train-scorer.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - any damage to either file means the same to the user
        raise ValueError(f"expert scorer in {folder} cannot be read ({err}); train it again.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not an openwan expert scorer (format {FORMAT}); train it again.")
    layers = [(tensors[f"layers.{k}.weight"], tensors[f"layers.{k}.bias"]) for k in range(int(meta["layers"]))]
    rest = {k: v for k, v in meta.items() if k not in ("format", "embed_model", "measures", "dim", "feature_names",
                                                        "layers")}
    return ExpertScorer(meta["embed_model"], tuple(meta["measures"]), meta["dim"], tensors["mean"], tensors["scale"],
                        layers, rest)


def _features(rows: list[dict[str, Any]], embed_model: str | None, measures: tuple[str, ...],
              dim: int | None) -> np.ndarray:
    out = []
    for row in rows:
        clip = row.get("clip_id")
        vector = row.get("embed_vector")
        if vector is None:
            raise ValueError(f"clip {clip} has no embed_vector; enable the embed stage before the scorer.")
        if embed_model is not None and row.get("embed_model") != embed_model:
            raise ValueError(f"clip {clip} has embeddings of {row.get('embed_model')}, but the scorer was trained on "
                             f"{embed_model}; set embed.embedder to match, or train a scorer on these embeddings.")
        if dim is not None and len(vector) != dim:
            raise ValueError(f"clip {clip} has an embed_vector of {len(vector)} numbers; the scorer takes {dim}.")
        extra = []
        for name in measures:
            value = row.get(name)
            if value is None or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ValueError(f"clip {clip} has no finite {name} (a measure the scorer uses, {value!r}); enable "
                                 f"the stage that writes it.")
            extra.append(float(value))
        out.append(np.concatenate([np.asarray(vector, np.float64), extra]))
    return np.stack(out) if out else np.zeros((0, (dim or 0) + len(measures)))


def train_scorer(rows: list[dict[str, Any]], labels: dict[str, float],
                 cfg: TrainScorerConfig = TrainScorerConfig()) -> tuple[ExpertScorer, dict[str, float]]:
    """Fit an expert scorer on the labelled rows (``labels``: clip_id -> score, from :func:`read_labels`).

    Returns the scorer (fitted on every labelled clip) and cross-validated metrics over ``cfg.folds`` folds:
    ``spearman`` (rank correlation of out-of-fold predictions with the labels), ``mae`` (in label units),
    ``n`` (labelled clips used), ``folds``.
    """
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    by_id = {str(r.get("clip_id")): r for r in rows}
    unknown = sorted(set(labels) - set(by_id))
    if unknown:
        raise ValueError(f"the labels name {len(unknown)} clips not in the rows (e.g. {unknown[0]}); label clips of "
                         f"this manifest.")
    used = [by_id[c] for c in sorted(labels)]
    folds = min(cfg.folds, len(used))
    if len(used) < max(4, folds):
        raise ValueError(f"train_scorer needs at least 4 labelled clips; got {len(used)}. Score more clips in the "
                         f"label sheet.")
    models = {str(r.get("embed_model")) for r in used}
    if len(models) > 1:
        raise ValueError(f"the labelled clips hold embeddings of several models ({', '.join(sorted(models))}); "
                         f"re-run embed with one embed.embedder.")
    embed_model = models.pop()
    dim = len(used[0].get("embed_vector") or [])
    x = _features(used, embed_model, cfg.measures, dim)
    y = np.array([labels[str(r["clip_id"])] for r in used], dtype=np.float64)
    predicted = np.zeros_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=cfg.seed).split(x):
        predicted[test] = _fit(x[train], y[train], cfg, embed_model, dim).predict_features(x[test])
    rho = spearmanr(predicted, y).statistic
    metrics = {"spearman": float(rho) if np.isfinite(rho) else 0.0, "mae": float(np.abs(predicted - y).mean()),
               "n": len(used), "folds": folds}
    scorer = _fit(x, y, cfg, embed_model, dim)
    scorer.meta = {"train": {k: v for k, v in asdict(cfg).items()}, "metrics": metrics}
    return scorer, metrics


def _fit(x: np.ndarray, y: np.ndarray, cfg: TrainScorerConfig, embed_model: str, dim: int) -> ExpertScorer:
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-12] = 1.0  # a constant feature stays constant (zero) instead of dividing by zero
    xs = (x - mean) / scale
    if cfg.model == "ridge":
        from sklearn.linear_model import Ridge

        fit = Ridge(alpha=cfg.alpha).fit(xs, y)
        layers = [(fit.coef_.reshape(-1, 1), np.array([fit.intercept_]))]
    else:
        from sklearn.neural_network import MLPRegressor

        # L-BFGS: the labelled sets are small (hundreds), where it converges faster and steadier than Adam
        fit = MLPRegressor(hidden_layer_sizes=(cfg.hidden,), alpha=cfg.alpha, solver="lbfgs", max_iter=500,
                           random_state=cfg.seed).fit(xs, y)
        layers = list(zip(fit.coefs_, fit.intercepts_))
    return ExpertScorer(embed_model, cfg.measures, dim, mean, scale, layers)


# ------------------------------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class ScorerConfig:
    """Section ``scorer``: apply the expert scorer saved in ``path`` (a folder from train-scorer); giving ``path``
    turns the stage on. ``min_score``: clips scoring below it are rejected (None: score only)."""

    enabled: bool = False
    path: str | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.path:
            object.__setattr__(self, "enabled", True)
        if self.enabled and not self.path:
            raise ValueError("scorer is enabled but scorer.path is not given; give the folder written by "
                             "openwan curate train-scorer, or disable the scorer.")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ValueError(f"scorer.min_score must be a finite number or null; got {self.min_score}.")


class ScorerStage:
    """Per-clip stage ``scorer``: ``scorer_score`` from the saved expert scorer, on the clip's ``embed_vector`` (and
    the measures it was trained with); a reason when it is below ``min_score``."""

    name = "scorer"
    resources = Resources(num_cpus=1.0)

    def __init__(self, cfg: ScorerConfig):
        self.cfg = cfg
        folder = Path(cfg.path)
        if not (folder / WEIGHTS_FILE).is_file() or not (folder / META_FILE).is_file():
            raise ValueError(f"scorer.path {folder} holds no expert scorer ({WEIGHTS_FILE} and {META_FILE}); train "
                             f"one with openwan curate train-scorer.")
        self._scorer: ExpertScorer | None = None

    def setup(self) -> None:
        """Load the scorer once."""
        if self._scorer is None:
            self._scorer = load_scorer(self.cfg.path)

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        self.setup()
        score = float(self._scorer.predict([clip])[0])
        out = StageOutput(values={"scorer_score": score})
        if self.cfg.min_score is not None and score < self.cfg.min_score:
            out.reasons.append(f"expert score {score:.3f} is below scorer.min_score {self.cfg.min_score}")
        return out


__all__ = ["cluster_embeddings", "label_sample", "write_label_sheet", "read_labels", "TrainScorerConfig",
           "train_scorer", "ExpertScorer", "load_scorer", "ScorerConfig", "ScorerStage", "SHEET_COLUMNS"]
