"""Pixel-wise metric learning (PML): Chen, Pont-Tuset, Montes, Van Gool, CVPR 2018,
"Blazingly fast video object segmentation with pixel-wise metric learning".

Embeddings of every pixel are computed once per video (the cached backbone features through the
embedding head of Sec. 3.1); user input only builds the reference pool, and every other pixel
takes the majority label of its k nearest references (Sec. 3.2; `engine.pml_index.PMLIndex`). A
new click therefore costs one retrieval, not a network pass: the method is interactive.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..engine.memory import MemoryModel
from ..engine.pml_index import (ADAPT_PER_FRAME, ADAPT_WINDOW, CLICK_PROPAGATION, FINETUNE_STEPS, K_CLICK, PMLIndex,
                                check_adaptation, check_finetune_steps, check_stray_distance, check_weight)
from ..engine.refine import STRAY_DISTANCE
from ..progress import Progress, drive
from ..prompts import Prompts, masks_digest
from .base import Method, Session, head_param, head_path, param, prompt_model_param, register_method


@register_method
class PML(Method):
    """Pixel-wise metric learning: k-nearest-neighbour retrieval in a learned embedding space."""

    name = "pml"
    title = "PML: instant retrieval from clicks, boxes, masks"
    description = "Pixel-wise metric learning (Chen et al. 2018): instant retrieval from clicks, boxes and masks"
    interactive = True
    session_params = ("head",)
    quality = 10
    memory = MemoryModel(base_mib=1200, per_frame_mib=0.5)  # benchmark memory, rounded up

    @dataclass
    class Params:
        head: str = head_param("embedding head")
        prompt_model: str = prompt_model_param()
        online_adaptation: bool = param(True, "add confidently labelled pixels of each frame to the references while "
                                        "segmenting all frames (follows objects that change appearance); with a "
                                        "mask, box or scribble, not from clicks alone")
        adapt_per_frame: int = param(ADAPT_PER_FRAME, "online adaptation: at most this many confident pixels (grid "
                                     "cells) of each frame join the references", advanced=True, min=1, max=100_000)
        adapt_window: int = param(ADAPT_WINDOW, "online adaptation: the cells of the last this many frames stay "
                                  "references", advanced=True, min=1, max=10_000)
        k_mask: int = param(5, "neighbours voting for each pixel when masks, boxes or scribbles are given",
                            advanced=True, min=1)
        k_click: int = param(K_CLICK, "neighbours voting for each pixel when only clicks are given (fewer while a "
                             "label has too few clicks to win a majority)", advanced=True, min=1)
        click_propagation: float = param(
            CLICK_PROPAGATION, "with clicks alone: the weight of the labels propagated from the clicks through the "
            "whole video (an anchor graph of its pixels) against the nearest clicks' vote (0: the vote alone, as in "
            "the paper)", advanced=True, min=0.0, max=1.0, step=0.05)
        refine: bool = param(True, "snap the borders to image edges (guided filter)", advanced=True)
        stray_distance: int = param(STRAY_DISTANCE, "while segmenting all frames from a mask, box or scribble: an "
                                    "object's regions farther than this many grid cells from where it was in the "
                                    "frame before go to the background (a second, similar object entering does not "
                                    "take its label; 0: off)", advanced=True, min=0, max=1000)
        finetune_steps: int = param(FINETUNE_STEPS, "fine-tune the embedding head on the painted masks for this many "
                                    "steps before segmenting (0: off, as in the paper; not with head 'none' or "
                                    "without masks)", advanced=True, min=0, max=10_000)

        def __post_init__(self):
            check_adaptation(self.adapt_per_frame, self.adapt_window)
            check_finetune_steps(self.finetune_steps)
            check_stray_distance(self.stray_distance)
            check_weight("click_propagation", self.click_propagation)

    def create_session(self, video, shared, settings) -> Generator[Progress, None, PMLSession]:
        index = yield from PMLIndex.open(video, head_path(self.params.head), self.device, settings=settings)
        return PMLSession(self, index)


class PMLSession(Session):
    """PML on one video: its `PMLIndex` (pixel embeddings, guided-filter statistics, the anchor
    graph once built) and the index fine-tuned on the masks of the last full run."""

    def __init__(self, method: PML, index: PMLIndex):
        super().__init__(method, index.video)
        self.index = index
        #: ((finetune_steps, masks digest), index): the index whose head was fine-tuned on those masks
        self._tuned: tuple | None = None

    def view(self, prompts: Prompts) -> PMLIndex:
        """The index with exactly `prompts` as references (a fresh pool on shared embeddings) and the
        parameters' k / refine / click propagation; the fine-tuned index once a full run tuned it on
        the masks of `prompts`."""
        p = self.params
        base = self.index
        if self._tuned is not None and self._tuned[0] == (p.finetune_steps, masks_digest(prompts.masks)):
            base = self._tuned[1]
        return base.with_prompts(prompts, k_mask=p.k_mask, k_click=p.k_click, refine=p.refine,
                                 click_propagation=p.click_propagation)

    def _needs_graph(self) -> bool:
        """Click propagation from clicks read as they are asks for the video's anchor graph, built once."""
        return not self.uses_prompt_model and self.params.click_propagation > 0 and not self.index.has_anchor_graph

    def needs_preparing(self, prompts: Prompts | None = None) -> bool:
        return super().needs_preparing(prompts) or self._needs_graph()

    def prepare(self, prompts: Prompts | None = None) -> Generator[Progress, None, None]:
        yield from super().prepare(prompts)
        if self._needs_graph():
            yield from self.index.build_anchor_graph()

    def predict_frame(self, prompts: Prompts, t: int) -> np.ndarray:
        """The prompt model's masks on a frame with clicks or boxes (or its painted mask); elsewhere
        the retrieval from every prompt."""
        self.check(prompts)
        labels = self.prompt_frame(prompts, t) if self.uses_prompt_model else None
        if labels is not None:
            return labels
        drive(self.prepare(prompts), quiet=True)
        return self.view(drive(self.dense(prompts), quiet=True)).predict_frame(t)

    def segment(self, prompts: Prompts, start: int | None = None, direction: int = 0, live: bool = False,
                out=None) -> Generator[Progress, None, np.ndarray]:
        """Every frame (`PMLIndex.predict_all`): after fine-tuning the head on the masks (kept for the
        next runs and edits on the same masks) and with online adaptation, as the parameters say;
        `live`: neither (the whole-video update that follows an edit)."""
        self.check(prompts, start, direction)
        prompts = yield from self.dense(prompts)
        p = self.params
        view = self.view(prompts)
        self.confidence = np.full(len(self.video), np.nan, np.float32)
        options = {"adapt_per_frame": p.adapt_per_frame, "adapt_window": p.adapt_window,
                   "stray_distance": p.stray_distance, "finetune_steps": 0, "confidence": self.confidence,
                   "out": out}
        if live:
            return (yield from view.predict_all(online_adaptation=False, **options))
        if p.finetune_steps and view.finetunable and not view.finetune_history:
            view = yield from view.finetuned(p.finetune_steps)
            self._tuned = ((p.finetune_steps, masks_digest(prompts.masks)), view)
        return (yield from view.predict_all(online_adaptation=p.online_adaptation, **options))
