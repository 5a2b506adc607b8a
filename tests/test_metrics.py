"""DAVIS J / F / statistics pinned on small cases computed by hand."""

import json

import numpy as np
import pytest

from napari_vosembed.metrics import (
    SequenceResult,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    evaluate_sequence,
    seg2bmap,
    summarize,
)


def square(top, left, size, shape=(10, 10)):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def bitmap(text):
    return np.array([[c == "1" for c in row.split()] for row in text.strip().splitlines()])


# A 10x10 image, gt = the 4x4 square rows 3..6, cols 3..6 (16 pixels).
GT = square(3, 3, 4)
# Shifted right by 1 px: cols 4..7. Overlap 4 rows x 3 cols = 12, union 16 + 16 - 12 = 20.
SHIFT1 = square(3, 4, 4)
# Shifted right by 2 px: cols 5..8. Overlap 4 x 2 = 8, union 32 - 8 = 24.
SHIFT2 = square(3, 5, 4)

# seg2bmap of GT: a pixel is boundary when it differs from its E, S or SE neighbour. Inside the
# square that is the last column (x = 6) and last row (y = 6): 7 pixels; outside it is the column
# x = 2 (rows 2..6) and the row y = 2 (cols 2..6): 9 pixels. Together: the 16-pixel outline of
# the 5x5 square rows 2..6, cols 2..6 (half a pixel towards the origin).
GT_BOUNDARY = bitmap(
    """
    0 0 0 0 0 0 0 0 0 0
    0 0 0 0 0 0 0 0 0 0
    0 0 1 1 1 1 1 0 0 0
    0 0 1 0 0 0 1 0 0 0
    0 0 1 0 0 0 1 0 0 0
    0 0 1 0 0 0 1 0 0 0
    0 0 1 1 1 1 1 0 0 0
    0 0 0 0 0 0 0 0 0 0
    0 0 0 0 0 0 0 0 0 0
    0 0 0 0 0 0 0 0 0 0
    """
)


class TestRegionSimilarity:
    def test_shift_by_one_pixel(self):
        assert db_eval_iou(GT, SHIFT1) == pytest.approx(12 / 20, abs=1e-6)

    def test_shift_by_two_pixels(self):
        assert db_eval_iou(GT, SHIFT2) == pytest.approx(8 / 24, abs=1e-6)

    def test_void_pixels_leave_intersection_and_union(self):
        # Void = column 7, where only SHIFT1 has pixels (4 of them): union 20 - 4 = 16, inters 12.
        void = np.zeros((10, 10), dtype=bool)
        void[:, 7] = True
        assert db_eval_iou(GT, SHIFT1, void) == pytest.approx(12 / 16, abs=1e-6)

    def test_empty_masks(self):
        empty = np.zeros((10, 10), dtype=bool)
        assert db_eval_iou(empty, empty) == 1.0
        assert db_eval_iou(GT, empty) == 0.0
        assert db_eval_iou(empty, GT) == 0.0

    def test_shape_mismatch_raises(self):
        with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 11\)"):
            db_eval_iou(GT, np.zeros((10, 11), dtype=bool))


class TestSeg2bmap:
    def test_square_outline(self):
        np.testing.assert_array_equal(seg2bmap(GT), GT_BOUNDARY)

    def test_label_image_is_binarised(self):
        np.testing.assert_array_equal(seg2bmap(GT.astype(np.uint8) * 7), GT_BOUNDARY)

    def test_last_row_and_column(self):
        # seg = [[0 0 0], [0 1 1], [0 1 1]]. The plain E/S/SE rule marks the whole 3x3 (every
        # pixel sees a differing neighbour or an out-of-image zero). DAVIS then overrides:
        # last row = seg ^ E only: [0 1 1] ^ [1 1 0] = [1 0 1];
        # last column = seg ^ S only: [0 1 1] ^ [1 1 0] = [1 0 1]; bottom-right = 0.
        # So the object touching the image border gets no boundary along the border.
        seg = bitmap(
            """
            0 0 0
            0 1 1
            0 1 1
            """
        )
        expected = bitmap(
            """
            1 1 1
            1 0 0
            1 0 0
            """
        )
        np.testing.assert_array_equal(seg2bmap(seg), expected)

    def test_full_mask_has_no_boundary(self):
        assert not seg2bmap(np.ones((5, 7), dtype=bool)).any()

    def test_downscaled_map(self):
        # One pixel at (2, 2) of a 4x4 mask: boundary pixels (1,1), (1,2), (2,1), (2,2), which map
        # to (floor(y / 2), floor(x / 2)) = the four pixels of the 2x2 map.
        seg = np.zeros((4, 4), dtype=bool)
        seg[2, 2] = True
        np.testing.assert_array_equal(seg2bmap(seg, width=2, height=2), np.ones((2, 2), dtype=bool))

    def test_larger_map_is_refused(self):
        with pytest.raises(ValueError):
            seg2bmap(GT, width=20, height=20)


class TestBoundaryAccuracy:
    def test_shift_by_one_pixel_is_within_tolerance(self):
        # Tolerance ceil(0.008 * sqrt(10^2 + 10^2)) = ceil(0.113) = 1 px, disk(1) = the 4-neighbour
        # cross. SHIFT1's outline is rows 2..6, cols 3..7: each of its 16 pixels is on GT's outline
        # or one step left/right of it, and vice versa: P = R = 16/16, F = 1 (while J = 0.6).
        assert db_eval_boundary(GT, SHIFT1) == pytest.approx(1.0, abs=1e-6)

    def test_shift_by_two_pixels(self):
        # SHIFT2's outline: rows 2..6, cols 4..8 (16 px). With the 1-px cross around GT's outline:
        # top row x = 4..6 on it, x = 7 next to (2, 6), x = 8 unmatched -> 4/5; bottom row the same
        # -> 4/5; left column x = 4: (3, 4) and (5, 4) touch GT's top/bottom rows, (4, 4) does not
        # -> 2/3; right column x = 8, rows 3..5 -> 0/3. P = 10/16. By symmetry R = 10/16.
        # F = 2PR / (P + R) = 0.625.
        assert db_eval_boundary(GT, SHIFT2) == pytest.approx(0.625, abs=1e-6)

    def test_pixel_tolerance_when_bound_th_at_least_one(self):
        # bound_th >= 1 is a radius in pixels: 1 px reproduces the 0.625 above; with disk(2) every
        # unmatched pixel above is exactly 2 px from the other outline (e.g. (2, 8) - (2, 6)), F = 1.
        assert db_eval_boundary(GT, SHIFT2, bound_th=1) == pytest.approx(0.625, abs=1e-6)
        assert db_eval_boundary(GT, SHIFT2, bound_th=2) == pytest.approx(1.0, abs=1e-6)

    def test_tolerance_grows_with_the_image_diagonal(self):
        # Same squares in a 100x100 image: ceil(0.008 * sqrt(2) * 100) = ceil(1.131) = 2 px -> F = 1.
        gt = square(3, 3, 4, shape=(100, 100))
        pred = square(3, 5, 4, shape=(100, 100))
        assert db_eval_boundary(gt, pred) == pytest.approx(1.0, abs=1e-6)

    def test_precision_differs_from_recall(self):
        # Prediction = GT plus the single pixel (0, 0), whose boundary is just (0, 0) itself (its E,
        # S and SE neighbours are 0) and lies 2+ px from GT's outline. Predicted outline: 17 px,
        # 16 matched -> P = 16/17; R = 16/16. F = 2 (16/17) / (16/17 + 1) = 32/33.
        pred = GT.copy()
        pred[0, 0] = True
        assert db_eval_iou(GT, pred) == pytest.approx(16 / 17, abs=1e-6)
        assert db_eval_boundary(GT, pred) == pytest.approx(32 / 33, abs=1e-6)

    def test_empty_masks(self):
        empty = np.zeros((10, 10), dtype=bool)
        # both empty: P = R = 1 -> F = 1
        assert db_eval_boundary(empty, empty) == 1.0
        # empty prediction: P = 1, R = 0 -> F = 0; empty annotation: P = 0, R = 1 -> F = 0
        assert db_eval_boundary(GT, empty) == 0.0
        assert db_eval_boundary(empty, GT) == 0.0

    def test_void_pixels_are_removed_before_the_boundaries(self):
        # Voiding everything empties both outlines: P = R = 1.
        void = np.ones((10, 10), dtype=bool)
        assert db_eval_boundary(GT, SHIFT2, void) == 1.0

    def test_shape_mismatch_raises(self):
        with pytest.raises(ValueError, match=r"\(10, 10\).*\(12, 10\)"):
            db_eval_boundary(GT, np.zeros((12, 10), dtype=bool))


class TestStatistics:
    def test_mean_recall_decay(self):
        # 9 values: mean 5.4 / 9 = 0.6; recall counts values > 0.5 (0.5 itself is not): 5 / 9.
        # Bins: round(linspace(1, 9, 5)) - 1 = [0, 2, 4, 6, 8] -> X[0:3], X[2:5], X[4:7], X[6:9];
        # decay = mean(1, .9, .8) - mean(.4, .3, .2) = 0.9 - 0.3 = 0.6.
        stats = db_statistics([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
        assert stats["mean"] == pytest.approx(0.6, abs=1e-6)
        assert stats["recall"] == pytest.approx(5 / 9, abs=1e-6)
        assert stats["decay"] == pytest.approx(0.6, abs=1e-6)

    def test_decay_bins_round_half_up(self):
        # 7 values: linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7]; + 1e-10 makes 2.5 -> 3 and 5.5 -> 6
        # (plain np.round would give 2 and 6), so ids = [0, 2, 3, 5, 6]: first bin X[0:3] = [1, 1, 0]
        # -> 2/3, last bin X[5:7] = [0.2, 0.4] -> 0.3; decay = 2/3 - 0.3 = 0.366667 (0.7 with
        # banker's rounding). mean = 2.6 / 7, recall = 2 / 7.
        stats = db_statistics([1.0, 1.0, 0.0, 0.0, 0.0, 0.2, 0.4])
        assert stats["decay"] == pytest.approx(2 / 3 - 0.3, abs=1e-6)
        assert stats["mean"] == pytest.approx(2.6 / 7, abs=1e-6)
        assert stats["recall"] == pytest.approx(2 / 7, abs=1e-6)

    def test_nan_values(self):
        # [nan, 1, 0, 1]: nanmean = 2/3; recall = mean([F, T, F, T]) = 0.5 (NaN is not > 0.5);
        # ids = round(linspace(1, 4, 5) + 1e-10) - 1 = [0, 1, 2, 2, 3]; first bin [nan, 1] -> 1,
        # last bin X[2:4] = [0, 1] -> 0.5; decay = 0.5.
        stats = db_statistics([np.nan, 1.0, 0.0, 1.0])
        assert stats["mean"] == pytest.approx(2 / 3, abs=1e-6)
        assert stats["recall"] == pytest.approx(0.5, abs=1e-6)
        assert stats["decay"] == pytest.approx(0.5, abs=1e-6)

    def test_single_value_has_no_decay(self):
        assert db_statistics([0.7]) == {"mean": pytest.approx(0.7), "recall": 1.0, "decay": 0.0}


def labels(*masks_and_ids, shape=(10, 10)):
    out = np.zeros(shape, dtype=np.int32)
    for mask, obj in masks_and_ids:
        out[mask] = obj
    return out


class TestEvaluateSequence:
    def test_prediction_equal_to_gt_scores_one(self):
        gt = [labels((GT, 1), (square(0, 0, 2), 2)) for _ in range(4)]
        result = evaluate_sequence(gt, gt)
        assert result.object_ids == (1, 2)
        np.testing.assert_array_equal(result.j, np.ones((2, 2)))
        np.testing.assert_array_equal(result.f, np.ones((2, 2)))
        summary = result.summary()
        assert summary["J&F-Mean"] == 1.0
        assert summary["J-Mean"] == 1.0 and summary["F-Mean"] == 1.0

    def test_background_prediction_scores_zero(self):
        gt = [labels((GT, 1)) for _ in range(3)]
        pred = np.zeros((3, 10, 10), dtype=np.uint8)
        result = evaluate_sequence(pred, gt, protocol="all")
        np.testing.assert_array_equal(result.j, np.zeros((1, 3)))
        np.testing.assert_array_equal(result.f, np.zeros((1, 3)))
        assert result.summary()["J&F-Mean"] == 0.0

    def test_each_object_is_scored_on_its_own(self):
        # Object 1 predicted exactly, object 2 missed: J = F = 1 for 1, 0 for 2; averages 0.5.
        small = square(0, 0, 2)
        gt = [labels((GT, 1), (small, 2)) for _ in range(3)]
        pred = [labels((GT, 1)) for _ in range(3)]
        result = evaluate_sequence(pred, gt, protocol="all")
        np.testing.assert_array_equal(result.j, [[1, 1, 1], [0, 0, 0]])
        np.testing.assert_array_equal(result.f, [[1, 1, 1], [0, 0, 0]])
        summary = result.summary()
        assert summary["J-Mean"] == pytest.approx(0.5)
        assert summary["F-Mean"] == pytest.approx(0.5)
        assert summary["objects"]["1"]["J-Mean"] == 1.0
        assert summary["objects"]["2"]["J-Mean"] == 0.0

    def test_swapped_ids_score_zero(self):
        small = square(0, 0, 2)
        gt = [labels((GT, 1), (small, 2)) for _ in range(3)]
        pred = [labels((GT, 2), (small, 1)) for _ in range(3)]
        result = evaluate_sequence(pred, gt, protocol="all")
        np.testing.assert_array_equal(result.j, np.zeros((2, 3)))

    def test_object_absent_in_some_frames(self):
        # Object 3 is only in gt frame 1 and never predicted: frames 0 and 2 have both masks
        # empty (J = F = 1), frame 1 misses it (J = F = 0).
        gt = [labels((GT, 1)), labels((GT, 1), (square(0, 0, 2), 3)), labels((GT, 1))]
        pred = [labels((GT, 1)) for _ in range(3)]
        result = evaluate_sequence(pred, gt, protocol="all")
        assert result.object_ids == (1, 3)
        np.testing.assert_array_equal(result.j[1], [1, 0, 1])
        np.testing.assert_array_equal(result.f[1], [1, 0, 1])

    def test_semi_supervised_leaves_out_first_and_last_frame(self):
        # Prediction wrong (background) in frames 0 and 3, exact in frames 1 and 2.
        gt = [labels((GT, 1)) for _ in range(4)]
        pred = [np.zeros((10, 10), int), gt[1], gt[2], np.zeros((10, 10), int)]
        semi = evaluate_sequence(pred, gt)
        assert semi.frame_indices == (1, 2)
        np.testing.assert_array_equal(semi.j, [[1, 1]])
        assert semi.summary()["J&F-Mean"] == 1.0
        full = evaluate_sequence(pred, gt, protocol="all")
        assert full.frame_indices == (0, 1, 2, 3)
        np.testing.assert_array_equal(full.j, [[0, 1, 1, 0]])
        assert full.summary()["J-Mean"] == pytest.approx(0.5)

    def test_semi_supervised_needs_three_frames(self):
        gt = [labels((GT, 1)) for _ in range(2)]
        with pytest.raises(ValueError, match="at least 3 frames"):
            evaluate_sequence(gt, gt)

    def test_frame_count_mismatch_raises(self):
        gt = np.zeros((4, 10, 10), int)
        gt[:, 3:7, 3:7] = 1
        with pytest.raises(ValueError, match=r"\(3, 10, 10\).*\(4, 10, 10\)"):
            evaluate_sequence(gt[:3], gt)

    def test_frame_shape_mismatch_raises(self):
        gt = np.zeros((3, 10, 10), int)
        gt[:, 3:7, 3:7] = 1
        pred = np.zeros((3, 10, 12), int)
        with pytest.raises(ValueError, match=r"\(10, 12\).*\(10, 10\)"):
            evaluate_sequence(pred, gt)

    def test_unknown_protocol_raises(self):
        gt = [labels((GT, 1)) for _ in range(3)]
        with pytest.raises(ValueError, match="protocol"):
            evaluate_sequence(gt, gt, protocol="supervised")

    def test_summary_statistics(self):
        # 5 frames, exact in 0-1, background in 2-4: J = F = [1, 1, 0, 0, 0]. Mean 0.4, recall 0.4,
        # bins ids [0, 1, 2, 3, 4]: decay = mean(X[0:2]) - mean(X[3:5]) = 1 - 0 = 1.
        gt = [labels((GT, 1)) for _ in range(5)]
        pred = [gt[0], gt[1]] + [np.zeros((10, 10), int)] * 3
        summary = evaluate_sequence(pred, gt, protocol="all").summary()
        for measure in "JF":
            assert summary[f"{measure}-Mean"] == pytest.approx(0.4)
            assert summary[f"{measure}-Recall"] == pytest.approx(0.4)
            assert summary[f"{measure}-Decay"] == pytest.approx(1.0)
        assert summary["J&F-Mean"] == pytest.approx(0.4)
        assert summary["n_objects"] == 1 and summary["n_frames"] == 5


class TestSummarize:
    def test_global_is_averaged_over_objects(self):
        # Sequence "a": objects with J-Mean 1 and 0; sequence "b": one object with J-Mean 1.
        # DAVIS global = mean over the 3 objects = 2/3 (a mean over sequences would give 0.75).
        a_scores = np.array([[1.0, 1.0], [0.0, 0.0]])
        a = SequenceResult((1, 2), (0, 1), j=a_scores, f=a_scores)
        b = SequenceResult((1,), (0, 1), j=np.array([[1.0, 1.0]]), f=np.array([[0.5, 0.5]]))
        out = summarize({"a": a, "b": b})
        assert out["global"]["J-Mean"] == pytest.approx(2 / 3)
        assert out["global"]["F-Mean"] == pytest.approx((1 + 0 + 0.5) / 3)
        assert out["global"]["J&F-Mean"] == pytest.approx((2 / 3 + 0.5) / 2)
        assert out["global"]["J-Recall"] == pytest.approx(2 / 3)
        assert out["global"]["n_objects"] == 3 and out["global"]["n_sequences"] == 2
        assert out["sequences"]["a"]["J-Mean"] == pytest.approx(0.5)
        assert out["sequences"]["b"]["F-Mean"] == pytest.approx(0.5)
        assert json.loads(json.dumps(out))["sequences"]["b"]["objects"]["1"]["J-Mean"] == 1.0

    def test_empty_raises(self):
        with pytest.raises(ValueError):
            summarize({})
