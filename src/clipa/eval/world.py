"""Zero-shot tasks and retrieval on the built-in world's held-out scenes (``data.source: world``).

Four zero-shot tasks, each on objects whose kind-colour pair never occurred in training and
with prompts in wording never used in training: which object (10 kinds, chance 10%), which
colour (6, chance 16.7%), which size (2, chance 50%) and, for two-object scenes, whether
"A is left of B" or "B is left of A" (chance 50%). Retrieval is recall@k over 500 scenes of
one to three objects, one held-out caption each.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.world import CLASSNAMES, EVAL_TEMPLATES, eval_world
from .features import encode_images, encode_texts
from .retrieval import retrieval_metrics
from .zeroshot import build_classifier, topk_accuracy

CHANCE = {"object_acc1": 1 / 10, "colour_acc1": 1 / 6, "size_acc1": 1 / 2, "relation_acc1": 1 / 2}


def _embed_images(model: Any, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    batches = ((images[i:i + batch_size], None) for i in range(0, len(images), batch_size))
    return encode_images(model, batches, device)[0]


def _relation_accuracy(model: Any, tokenizer: Callable, img: torch.Tensor, texts: list, device) -> float:
    """Fraction of pairs whose true relation prompts outscore the swapped ones."""
    prompts = [p for true, false in texts for p in (*true, *false)]
    per_class = len(texts[0][0])
    emb = encode_texts(model, tokenizer, prompts, device).cpu()  # [N * 2 * T, E]
    emb = F.normalize(emb.view(len(texts), 2, per_class, -1).mean(dim=2), dim=-1)  # [N, 2, E]
    scores = torch.einsum("ne,nke->nk", img, emb)  # [N, 2]: true, swapped
    return (scores[:, 0] > scores[:, 1]).float().mean().item()


def evaluate_world(model: Any, tokenizer: Callable, device: torch.device | str, batch_size: int = 256) -> dict:
    """``object/colour/size/relation_acc1``, their mean ``zeroshot_mean`` and retrieval recall@1/5."""
    was_training = model.training
    model.eval()
    data = eval_world(model.visual.image_size)
    metrics = {}
    single = _embed_images(model, data.single, device, batch_size)
    for task, classnames in CLASSNAMES.items():
        classifier = build_classifier(model, tokenizer, classnames, EVAL_TEMPLATES[task], device).float().cpu()
        metrics[f"{task}_acc1"] = topk_accuracy(single @ classifier, data.labels[task], 1)
    pairs = _embed_images(model, data.pairs, device, batch_size)
    metrics["relation_acc1"] = _relation_accuracy(model, tokenizer, pairs, data.relation_texts, device)
    metrics["zeroshot_mean"] = sum(metrics[k] for k in CHANCE) / len(CHANCE)
    img = _embed_images(model, data.retrieval, device, batch_size)
    txt = encode_texts(model, tokenizer, data.retrieval_captions, device).cpu()
    metrics.update(retrieval_metrics(txt @ img.T, torch.arange(len(img)), ks=(1, 5)))
    model.train(was_training)
    return metrics
