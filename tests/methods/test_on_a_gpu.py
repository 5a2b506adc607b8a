"""Every method on a GPU: sessions stay on the device and label as they do on the CPU. These run
only where torch sees CUDA (the CPU runs the same code paths through `refine_device` in
test_tvos.py, test_pml_index.py and test_refine.py)."""

import numpy as np
import pytest
import torch

from napari_vosembed.engine import refine
from napari_vosembed.engine.fetch import default_model_path
from napari_vosembed.methods import get_method, segment
from napari_vosembed.metrics import db_eval_iou
from napari_vosembed.prompts import Prompts
from napari_vosembed.sample import moving_square

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_the_guided_filter_on_the_gpu_gives_the_labels_of_opencv():
    frames, masks = moving_square(3)
    rng = np.random.default_rng(0)
    scores = np.stack([masks[1] == 0, masks[1] == 1], -1)[4::8, 4::8].astype(np.float32)
    scores += rng.normal(0, 0.1, scores.shape).astype(np.float32)
    values = np.array([0, 1])
    expected = refine.FrameRefiner(frames, 8, (0, 255))(1, scores, values)
    on_gpu = refine.FrameRefiner(frames, 8, (0, 255), keep=True, device="cuda")
    assert refine.refine_device("cuda") == torch.device("cuda")
    assert (on_gpu(1, torch.from_numpy(scores).cuda(), values) == expected).mean() > 0.999
    assert on_gpu._filters[1].mean_i.is_cuda


@pytest.mark.skipif(not default_model_path().exists(), reason="the ISNet backbone is not cached")
@pytest.mark.parametrize("method", ["pml", "tvos", "masktrack", "lse", "unsupervised"])
def test_each_method_on_the_gpu_labels_as_on_the_cpu(method):
    frames, masks = moving_square(8)
    needs = get_method(method).needs_prompts
    prompts = Prompts().add_mask(0, masks[0]) if needs else Prompts()
    params = {"prompt_model": "none"} if method != "unsupervised" else {}
    on_cpu = segment(frames, prompts, method, "cpu", **params)
    on_gpu = segment(frames, prompts, method, "cuda", **params)
    j_cpu = np.mean([db_eval_iou(masks[t] == 1, on_cpu[t] == 1) for t in range(1, 8)])
    j_gpu = np.mean([db_eval_iou(masks[t] == 1, on_gpu[t] == 1) for t in range(1, 8)])
    assert j_gpu > j_cpu - 0.05 and j_gpu > 0.6, (j_cpu, j_gpu)
    assert np.mean([db_eval_iou(on_cpu[t] > 0, on_gpu[t] > 0) for t in range(1, 8)]) > 0.9
