"""``train.compile``: what torch.compile sees is one graph under every token reduction.

Reference: ``torch._dynamo.explain`` (graph and graph-break counts) on exactly what
``models.parallelize.apply_compile`` compiles: the image tower's ``_encode`` (all of its forward but the draw
of the kept patches, which reads the masking generator) and the text tower's blocks. A
compiled tower must also give the eager tower's embeddings and gradients (fp32, 1e-4
relative to the largest entry; inductor fuses and reorders the arithmetic).
"""

from __future__ import annotations

import pytest
import torch

import clipa
from clipa.config import ImageReductionConfig
from clipa.models.parallelize import apply_compile

from test_distributed import tiny_model

REDUCTIONS = {
    "none": ImageReductionConfig(strategy="none"),
    "random": ImageReductionConfig(strategy="random", ratio=0.5),
    "grid": ImageReductionConfig(strategy="grid", grid_position="random"),
    "block": ImageReductionConfig(strategy="block", ratio=0.5),
}


def small_model() -> clipa.CLIP:
    torch.manual_seed(0)
    return tiny_model("clip")


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(1, 100, (4, 8), generator=g)


@pytest.mark.parametrize("strategy", list(REDUCTIONS))
def test_the_image_tower_is_one_graph_under_every_reduction(strategy):
    model = small_model()
    model.visual.set_token_reduction(REDUCTIONS[strategy], torch.Generator().manual_seed(0))
    images, _ = batch()
    keep = model.visual.token_reduction.indices(4, (4, 4), images.device)
    assert (keep is None) == (strategy == "none")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.visual._encode)(images, keep)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_drawing_inside_the_graph_would_break_it():
    """The reason for the split: the generator keyword breaks the graph."""
    model = small_model()
    model.visual.set_token_reduction(REDUCTIONS["random"], torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    assert torch._dynamo.explain(model.visual)(batch()[0]).graph_break_count > 0


@pytest.mark.parametrize("causal", [True, False])
def test_the_text_blocks_are_one_graph(causal):
    model = small_model()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.transformer)(torch.randn(4, 8, 32), causal)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.slow
def test_compiled_towers_give_the_eager_embeddings_and_gradients():
    eager, compiled = small_model(), small_model()
    for m in (eager, compiled):
        m.visual.set_token_reduction(REDUCTIONS["random"], torch.Generator().manual_seed(0))
    apply_compile(compiled, per_block=False)
    images, text = batch()
    outs = []
    for m in (eager, compiled):
        img, txt, _ = m(images, text)  # OpenCLIP's forward: features and exp(temperature)
        (img.square().sum() + (img @ txt.T).sum()).backward()
        outs.append([img.detach(), txt.detach()] + [p.grad for p in m.parameters() if p.grad is not None])
    for a, b in zip(*outs):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
