import numpy as np
import pytest

from napari_vosembed.engine.cache import EmbeddingSettings
from napari_vosembed.engine.confidence import frame_confidence, least_certain
from napari_vosembed.methods import get_method
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts
from napari_vosembed.sample import sample_clip

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)


def test_the_confidence_is_the_margin_where_an_object_is_in_question():
    cells = np.array([[1.0, 0.0], [0.0, 1.0], [0.85, 0.15]])
    assert frame_confidence(cells) == pytest.approx(0.85)  # the first cell is not in question: (1 + 0.7) / 2
    tie = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert frame_confidence(tie) == 0.0  # the only cell in question is a tie
    assert frame_confidence(np.array([[1.0, 0.0], [0.97, 0.03]])) == 1.0  # nothing in question
    two = np.array([[[0.1, 0.6, 0.3]]])  # (h, w, K): object 1 leads object 2 by 0.3
    assert frame_confidence(two) == pytest.approx(0.3)
    assert least_certain(np.array([0.9, np.nan, 0.2, 0.5])) == 2 and least_certain(np.full(3, np.nan)) is None


@pytest.mark.parametrize("name", ["pml", "tvos"])
def test_sessions_say_how_sure_they_were_of_each_frame(name):
    frames, masks = sample_clip(6, 64, 96)
    session = drive(get_method(name)(device="cpu", head="none").open_session(frames, settings=TINY), quiet=True)
    assert session.confidence is None  # nothing segmented yet
    drive(session.segment(Prompts().add_mask(0, masks[0])), quiet=True)
    c = session.confidence
    assert c.shape == (6,) and np.isfinite(c).all() and ((c >= 0) & (c <= 1)).all()
    if name == "tvos":
        assert c[0] == 1.0  # the annotated frame
        drive(session.segment(Prompts().add_mask(2, masks[2]), start=2, direction=1), quiet=True)
        assert np.isnan(session.confidence[:2]).all() and np.isfinite(session.confidence[2:]).all()
