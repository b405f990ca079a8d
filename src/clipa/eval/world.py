"""Zero-shot tasks and retrieval on the built-in world's held-out scenes (``data.source: world``).

Four zero-shot tasks, each on objects whose kind-colour pair never occurred in training and
with prompts in wording never used in training. Which object (10 kinds, chance 10%), which
colour (6, chance 16.7%) and which size (2, chance 50%) ask about one attribute of a single
object: its whole phrase ("an image of a small red ring.") against the same phrase with that
attribute changed ("an image of a small red swan.", ...), as the relation task asks whether
"A is left of B" or "B is left of A" (two-object scenes, chance 50%). The true prompt is
always a held-out combination. Prompts naming the class alone ("an image of a ring.") would
measure a colour prior instead: training never shows a kind in its held-out colour, so a
bare noun's embedding leans away from exactly that colour (after 1,024 steps of micro-64
with 4 px patches, seeds 0 and 1: 14% and 29% with whole phrases, 12% and 5% with bare nouns; chance 10%,
``benchmarks/study_world_learning.py``). Retrieval is recall@k over 500 scenes of one to
three objects, one held-out caption each.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.eval_sets import Tally, describe_subset, spread
from ..data.world import COLOURS, EVAL_TEMPLATES, KINDS, SIZES, eval_world
from .features import encode_images, encode_texts
from .retrieval import retrieval_metrics
from .zeroshot import topk_accuracy

CHANCE = {"object_acc1": 1 / 10, "colour_acc1": 1 / 6, "size_acc1": 1 / 2, "relation_acc1": 1 / 2}


def _embed_images(model: Any, images: torch.Tensor, device, batch_size: int, dtype) -> torch.Tensor:
    batches = ((images[i:i + batch_size], None) for i in range(0, len(images), batch_size))
    return encode_images(model, batches, device, dtype)[0]


def attribute_accuracy(model: Any, tokenizer: Callable, img: torch.Tensor, labels: dict[str, torch.Tensor],
                       device: torch.device | str, templates: list[str] = EVAL_TEMPLATES,
                       dtype: torch.dtype | None = None) -> dict[str, float]:
    """Which object, colour and size of single objects (``img``: [N, E], normalised): each image
    against its own phrase with one attribute varied, in ``templates`` ({A}: the phrase)."""
    phrases = [f"a {s} {c} {k}" for s in SIZES for c in COLOURS for k in KINDS]
    emb = encode_texts(model, tokenizer, [t.format(A=p) for p in phrases for t in templates], device,
                       dtype=dtype).cpu()
    emb = F.normalize(emb.view(len(phrases), len(templates), -1).mean(dim=1), dim=-1)
    emb = emb.view(len(SIZES), len(COLOURS), len(KINDS), -1)  # [sizes, colours, kinds, E]
    s, c, k = labels["size"], labels["colour"], labels["object"]  # [N] each
    candidates = {
        "object": emb[s, c],  # [N, kinds, E]
        "colour": emb[s, :, k],  # [N, colours, E]
        "size": emb[:, c, k].transpose(0, 1),  # [N, sizes, E]
    }
    return {f"{task}_acc1": topk_accuracy(torch.einsum("ne,nke->nk", img, cands), labels[task], 1)
            for task, cands in candidates.items()}


def _relation_accuracy(model: Any, tokenizer: Callable, img: torch.Tensor, texts: list, device, dtype) -> float:
    """Fraction of pairs whose true relation prompts outscore the swapped ones."""
    prompts = [p for true, false in texts for p in (*true, *false)]
    per_class = len(texts[0][0])
    emb = encode_texts(model, tokenizer, prompts, device, dtype=dtype).cpu()  # [N * 2 * T, E]
    emb = F.normalize(emb.view(len(texts), 2, per_class, -1).mean(dim=2), dim=-1)  # [N, 2, E]
    scores = torch.einsum("ne,nke->nk", img, emb)  # [N, 2]: true, swapped
    return (scores[:, 0] > scores[:, 1]).float().mean().item()


def evaluate_world(model: Any, tokenizer: Callable, device: torch.device | str, batch_size: int = 256,
                   dtype: torch.dtype | None = None, max_samples: int | None = None) -> dict:
    """``object/colour/size/relation_acc1``, their mean ``zeroshot_mean``, retrieval recall@1/5
    and ``samples``. ``max_samples`` keeps that many of each held-out set (single objects,
    pairs, retrieval scenes), evenly spaced over it; ``dtype`` is the autocast dtype (None: fp32)."""
    was_training = model.training
    model.eval()
    data = eval_world(model.visual.image_size)
    single, pairs, scenes = (spread(n, max_samples) for n in (len(data.single), len(data.pairs), len(data.retrieval)))
    metrics = {}
    img = _embed_images(model, data.single[single], device, batch_size, dtype)
    labels = {task: values[single] for task, values in data.labels.items()}
    metrics.update(attribute_accuracy(model, tokenizer, img, labels, device, dtype=dtype))
    img = _embed_images(model, data.pairs[pairs], device, batch_size, dtype)
    texts = [data.relation_texts[i] for i in pairs]
    metrics["relation_acc1"] = _relation_accuracy(model, tokenizer, img, texts, device, dtype)
    metrics["zeroshot_mean"] = sum(metrics[k] for k in CHANCE) / len(CHANCE)
    img = _embed_images(model, data.retrieval[scenes], device, batch_size, dtype)
    captions = [data.retrieval_captions[i] for i in scenes]
    txt = encode_texts(model, tokenizer, captions, device, batch_size, dtype=dtype).cpu()
    metrics.update(retrieval_metrics(txt @ img.T, torch.arange(len(img)), ks=(1, 5)))
    model.train(was_training)
    scored, total = len(single) + len(pairs) + len(scenes), len(data.single) + len(data.pairs) + len(data.retrieval)
    return {**metrics, "samples": Tally(scored=scored).record(describe_subset(scored, total))}
