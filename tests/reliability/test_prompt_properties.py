"""Property-based tests of the prompts: any points, boxes, masks and scribbles on any frames either
validate, and then reduce to reference pixels inside the video, or raise our PromptError with a
message; never an error from inside numpy."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_vosembed.errors import PromptError
from napari_vosembed.prompts import Box, Point, Prompts

SETTINGS = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
N, H, W = 4, 12, 16
coordinate = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-50, 50))
frame = st.integers(-3, N + 2)
label = st.integers(-2, 2 ** 40)
points = st.builds(Point, frame, coordinate, coordinate, label)
boxes = st.builds(Box, frame, coordinate, coordinate, coordinate, coordinate, label)
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.bool_])
shapes = st.sampled_from([(H, W), (W, H), (H, W, 1), (H,), (0, 0)])


@st.composite
def images(draw):
    dtype, shape = draw(dtypes), draw(shapes)
    values = draw(st.lists(st.integers(-3, 300), min_size=1, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    return rng.choice(values, size=shape).astype(dtype) if np.prod(shape) else np.zeros(shape, dtype)


prompts = st.builds(Prompts, st.lists(points, max_size=4), st.lists(boxes, max_size=3),
                    st.dictionaries(frame, images(), max_size=2), st.dictionaries(frame, images(), max_size=2))


@SETTINGS
@given(prompts)
def test_any_prompts_validate_or_raise_a_prompt_error_and_valid_ones_stay_inside_the_video(p):
    try:
        p.validate(N, H, W)
    except PromptError as err:
        assert str(err)
        return
    refs = p.reference_pixels(H, W)
    assert len(refs) and refs.object_ids
    assert ((refs.frame >= 0) & (refs.frame < N)).all()
    assert ((refs.y >= 0) & (refs.y < H) & (refs.x >= 0) & (refs.x < W)).all()


@pytest.mark.parametrize("bad", [Box(0, float("nan"), 2, 8, 9), Box(0, 1, 2, float("inf"), 9),
                                 Point(0, float("nan"), 3, 1)])
def test_coordinates_that_are_not_numbers_are_refused_by_name(bad):
    p = Prompts(points=[bad] if isinstance(bad, Point) else [], boxes=[bad] if isinstance(bad, Box) else [])
    with pytest.raises(PromptError, match="not a finite number|outside"):
        p.validate(N, H, W)


def test_ids_need_not_be_contiguous_and_may_exceed_any_small_dtype():
    mask = np.zeros((H, W), np.int64)
    mask[1:4, 1:4], mask[6:9, 6:9], mask[9:11, 12:15] = 3, 300, 70_000
    p = Prompts().add_mask(0, mask)
    p.validate(N, H, W)
    assert p.object_ids == [3, 300, 70_000] and p.reference_pixels(H, W).object_ids == [3, 300, 70_000]


def test_more_objects_than_one_run_segments_are_refused_by_count():
    mask = np.arange(300 * 300, dtype=np.int64).reshape(300, 300) + 1  # 90,000 objects, one pixel each
    with pytest.raises(PromptError, match=r"the prompts name 90,000 objects; one run segments at most 65,535"):
        Prompts().add_mask(0, mask).validate(1, 300, 300)
