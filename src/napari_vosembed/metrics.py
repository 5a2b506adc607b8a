"""DAVIS benchmark evaluation: region similarity J, boundary accuracy F and their statistics.

The definitions follow the official DAVIS evaluation code (``davis2017-evaluation``,
``davis2017/metrics.py`` and ``davis2017/utils.py``, itself adapted from the DAVIS 2016
``db_eval_iou`` / ``db_eval_boundary``), i.e. Perazzi et al., "A Benchmark Dataset and
Evaluation Methodology for Video Object Segmentation", CVPR 2016, Sec. 3, and Pont-Tuset et
al., "The 2017 DAVIS Challenge on Video Object Segmentation", 2017.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.morphology import disk

PROTOCOLS = ("semi-supervised", "all")

_STAT_NAMES = ("Mean", "Recall", "Decay")


def _check_same_shape(annotation: np.ndarray, other: np.ndarray, what: str) -> None:
    if annotation.shape != other.shape:
        raise ValueError(
            f"annotation has shape {annotation.shape} but {what} has shape {other.shape}"
        )


def _void_mask(annotation: np.ndarray, void_pixels) -> np.ndarray:
    if void_pixels is None:
        return np.zeros(annotation.shape, dtype=bool)
    void = np.asarray(void_pixels).astype(bool)
    _check_same_shape(annotation, void, "void_pixels")
    return void


def db_eval_iou(annotation, segmentation, void_pixels=None) -> float:
    """Region similarity J: the Jaccard index of two binary masks (DAVIS, Perazzi et al. 2016, Sec. 3).

    Pixels marked in ``void_pixels`` are left out of both intersection and union. When the union
    is empty (both masks empty) J is 1.
    """
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    _check_same_shape(annotation, segmentation, "segmentation")
    valid = ~_void_mask(annotation, void_pixels)
    inters = np.sum(annotation & segmentation & valid)
    union = np.sum((annotation | segmentation) & valid)
    if np.isclose(union, 0):
        return 1.0
    return float(inters / union)


def seg2bmap(seg, width=None, height=None) -> np.ndarray:
    """1-pixel-wide boundary map of a mask (DAVIS ``_seg2bmap``, after D. Martin's BSDS ``seg2bmap``).

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour;
    the boundary therefore lies half a pixel towards the origin of the true contour. In the last
    row only the east neighbour counts, in the last column only the south neighbour, and the
    bottom-right pixel is never a boundary, so the image border itself is not a boundary.

    With ``width`` / ``height`` smaller than the mask (same aspect ratio within 0.01) each boundary
    pixel ``(y, x)`` is mapped to ``(floor(y * height / h), floor(x * width / w))``, as BSDS does.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap needs a 2-D mask, got shape {seg.shape}")
    h, w = seg.shape
    width = w if width is None else int(width)
    height = h if height is None else int(height)
    if not (0 < width <= w and 0 < height <= h) or abs(width / height - w / h) > 0.01:
        raise ValueError(f"cannot convert a {w}x{h} segmentation to a {width}x{height} boundary map")

    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]

    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False

    if width == w and height == h:
        return b
    bmap = np.zeros((height, width), dtype=bool)
    ys, xs = np.nonzero(b)
    bmap[(ys * height) // h, (xs * width) // w] = True
    return bmap


def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008) -> float:
    """Boundary accuracy F (DAVIS F measure, Perazzi et al. 2016, Sec. 3; DAVIS ``f_measure``).

    Boundaries come from :func:`seg2bmap` (void pixels removed from both masks first). A boundary
    pixel is matched when the other boundary, dilated by a disk of radius ``bound_pix``, covers
    it; ``bound_pix = bound_th`` if ``bound_th >= 1``, else ``ceil(bound_th * image diagonal)``.
    Precision is the matched fraction of the predicted boundary, recall that of the annotated one,
    and F their harmonic mean. Empty boundaries: both empty gives P = R = 1, an empty prediction
    P = 1, R = 0, an empty annotation P = 0, R = 1; F = 0 when P + R = 0.
    """
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    _check_same_shape(annotation, segmentation, "segmentation")
    if annotation.ndim != 2:
        raise ValueError(f"db_eval_boundary needs 2-D masks, got shape {annotation.shape}")
    valid = ~_void_mask(annotation, void_pixels)

    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(segmentation.shape))

    fg_boundary = seg2bmap(segmentation & valid)
    gt_boundary = seg2bmap(annotation & valid)

    kernel = disk(bound_pix).astype(np.uint8)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)

    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)

    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_boundary & gt_dil) / float(n_fg)
        recall = np.sum(gt_boundary & fg_dil) / float(n_gt)

    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_statistics(per_frame_values) -> dict:
    """Mean, Recall and Decay of per-frame values (DAVIS ``db_statistics``, Perazzi et al. 2016, Sec. 3.3).

    Mean is the NaN-ignoring mean; Recall the fraction of frames scoring above 0.5 (a NaN frame
    counts as a failure, as in DAVIS); Decay the mean of the first of 4 overlapping temporal bins
    minus the mean of the last, with bin edges ``round(linspace(1, N, 5) + 1e-10) - 1``.
    """
    values = np.asarray(per_frame_values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"db_statistics needs a non-empty 1-D list of values, got shape {values.shape}")
    n_bins = 4
    ids = (np.round(np.linspace(1, len(values), n_bins + 1) + 1e-10) - 1).astype(int)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(n_bins)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[-1])
    return {"mean": float(mean), "recall": float(recall), "decay": float(decay)}


def _davis_row(j_stats: Sequence[dict], f_stats: Sequence[dict]) -> dict:
    """DAVIS table columns: each statistic averaged over objects, J&F-Mean = (J-Mean + F-Mean) / 2."""
    row = {}
    for measure, stats in (("J", j_stats), ("F", f_stats)):
        for name in _STAT_NAMES:
            row[f"{measure}-{name}"] = float(np.mean([s[name.lower()] for s in stats]))
    return {"J&F-Mean": (row["J-Mean"] + row["F-Mean"]) / 2, **row}


@dataclass(frozen=True)
class SequenceResult:
    """Per-object, per-frame J and F of one sequence.

    ``j`` and ``f`` have shape ``(len(object_ids), len(frame_indices))``; row ``k`` belongs to
    object ``object_ids[k]`` and column ``t`` to frame ``frame_indices[t]`` of the sequence.
    """

    object_ids: tuple[int, ...]
    frame_indices: tuple[int, ...]
    j: np.ndarray
    f: np.ndarray

    def object_statistics(self) -> dict[int, dict]:
        """DAVIS statistics of each object: ``{id: {"J": db_statistics, "F": db_statistics}}``."""
        return {
            obj: {"J": db_statistics(self.j[k]), "F": db_statistics(self.f[k])}
            for k, obj in enumerate(self.object_ids)
        }

    def summary(self) -> dict:
        """DAVIS columns (J&F-Mean, J-Mean, J-Recall, J-Decay, F-...) over the objects, and per object."""
        per_object = self.object_statistics()
        objects = {
            str(obj): _davis_row([stats["J"]], [stats["F"]]) for obj, stats in per_object.items()
        }
        return {
            **_davis_row([s["J"] for s in per_object.values()], [s["F"] for s in per_object.values()]),
            "n_objects": len(self.object_ids),
            "n_frames": len(self.frame_indices),
            "objects": objects,
        }


def _frames(name: str, frames) -> list[np.ndarray]:
    out = []
    for t, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"{name} frame {t} must be a 2-D label image, got shape {frame.shape}")
        out.append(frame)
    return out


def evaluate_sequence(pred, gt, protocol: str = "semi-supervised") -> SequenceResult:
    """J and F of every ground-truth object in every evaluated frame (DAVIS 2017 evaluation).

    ``pred`` and ``gt`` are sequences of ``(H, W)`` integer label images (0 = background). Each
    non-zero id present in any ground-truth frame is scored on its own, as the binary masks
    ``pred == id`` against ``gt == id``. The ``"semi-supervised"`` protocol leaves out the first
    frame (the given reference) and the last, as DAVIS does; ``"all"`` (unsupervised,
    interactive) scores every frame.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    pred_frames = _frames("pred", pred)
    gt_frames = _frames("gt", gt)
    if len(pred_frames) != len(gt_frames):
        pred_shape = (len(pred_frames), *pred_frames[0].shape) if pred_frames else (0,)
        gt_shape = (len(gt_frames), *gt_frames[0].shape) if gt_frames else (0,)
        raise ValueError(
            f"pred has {len(pred_frames)} frames (shape {pred_shape}) but gt has "
            f"{len(gt_frames)} frames (shape {gt_shape})"
        )
    for t, (p, g) in enumerate(zip(pred_frames, gt_frames)):
        if p.shape != g.shape:
            raise ValueError(f"frame {t}: pred has shape {p.shape} but gt has shape {g.shape}")

    n_frames = len(gt_frames)
    if protocol == "semi-supervised":
        if n_frames < 3:
            raise ValueError(
                f"the semi-supervised protocol leaves out the first and last frame and needs "
                f"at least 3 frames, got {n_frames}"
            )
        frame_indices = tuple(range(1, n_frames - 1))
    else:
        if n_frames == 0:
            raise ValueError("pred and gt have no frames")
        frame_indices = tuple(range(n_frames))

    ids = np.unique(np.concatenate([np.unique(g) for g in gt_frames]))
    object_ids = tuple(int(i) for i in ids if i != 0)
    if not object_ids:
        raise ValueError("the ground truth contains no object (every frame is background)")

    j = np.zeros((len(object_ids), len(frame_indices)))
    f = np.zeros_like(j)
    for k, obj in enumerate(object_ids):
        for col, t in enumerate(frame_indices):
            gt_mask = gt_frames[t] == obj
            pred_mask = pred_frames[t] == obj
            j[k, col] = db_eval_iou(gt_mask, pred_mask)
            f[k, col] = db_eval_boundary(gt_mask, pred_mask)
    return SequenceResult(object_ids=object_ids, frame_indices=frame_indices, j=j, f=f)


def summarize(results: Mapping[str, SequenceResult]) -> dict:
    """Per-sequence and global DAVIS tables, as plain JSON-ready dicts.

    ``"global"`` is the DAVIS global result: every statistic averaged over all objects of all
    sequences (not over sequences), J&F-Mean = (J-Mean + F-Mean) / 2.
    """
    if not results:
        raise ValueError("summarize needs at least one sequence result")
    j_stats, f_stats = [], []
    for result in results.values():
        for stats in result.object_statistics().values():
            j_stats.append(stats["J"])
            f_stats.append(stats["F"])
    return {
        "global": {
            **_davis_row(j_stats, f_stats),
            "n_sequences": len(results),
            "n_objects": len(j_stats),
        },
        "sequences": {name: result.summary() for name, result in results.items()},
    }


def format_report(report: dict) -> str:
    """A fixed-width table of J, F and J&F (mean, recall, decay) per sequence and global."""
    head = f"{'sequence':<24}{'J&F':>8}{'J mean':>8}{'J rec':>8}{'J dec':>8}{'F mean':>8}{'F rec':>8}{'F dec':>8}"
    rows = [head, "-" * len(head)]

    keys = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")

    def row(name, r):
        return f"{name:<24}" + "".join(f"{r[k]:>8.3f}" for k in keys)

    rows += [row(name, r) for name, r in report["sequences"].items()]
    rows.append(row("global", report["global"]))
    return "\n".join(rows)
