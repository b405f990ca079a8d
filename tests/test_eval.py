"""Evaluation metrics and classifiers against CLIP_benchmark's own functions (the reference)."""

import math

import pytest
import torch

from clipa.eval import build_classifier, classification_metrics, evaluate_classification

cb_zs = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32", context_length=16)


def test_classifier_matches_clip_benchmark(tiny_model, tokenizer):
    names = ["cat", "dog", "car", "ship", "bird", "frog", "truck"]
    templates = ["a photo of a {c}.", "art of the {c}.", "a blurry {c}"]
    ours = build_classifier(tiny_model, tokenizer, names, templates, "cpu", batch_size=5)
    ref = cb_zs.zero_shot_classifier(tiny_model, tokenizer, names, templates, "cpu", amp=False)
    assert ours.shape == (128, len(names))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    callable_templates = [lambda c: f"a photo of a {c}.", lambda c: f"art of the {c}.", lambda c: f"a blurry {c}"]
    torch.testing.assert_close(build_classifier(tiny_model, tokenizer, names, callable_templates, "cpu"), ours)


def test_metrics_match_clip_benchmark():
    from sklearn.metrics import balanced_accuracy_score
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 12, generator=g)
    target = torch.randint(0, 11, (300,), generator=g)  # class 11 never occurs: excluded from the recall mean
    ours = classification_metrics(logits, target)
    acc1, acc5 = cb_zs.accuracy(logits, target, topk=(1, 5))
    assert ours["acc1"] == pytest.approx(acc1, abs=1e-12)
    assert ours["acc5"] == pytest.approx(acc5, abs=1e-12)
    ref_recall = balanced_accuracy_score(target.numpy(), logits.argmax(1).numpy())
    assert ours["mean_per_class_recall"] == pytest.approx(ref_recall, abs=1e-12)
    assert math.isnan(classification_metrics(logits[:, :4], target.clamp(max=3))["acc5"])


def test_evaluate_classification_matches_clip_benchmark(tiny_model, tokenizer):
    names = ["zero", "one", "two", "three", "four", "five"]
    clf = build_classifier(tiny_model, tokenizer, names, ["a photo of {c}."], "cpu")
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(7, 3, 32, 32, generator=g), torch.randint(0, 6, (7,), generator=g)) for _ in range(3)]
    ours = evaluate_classification(tiny_model, clf, batches, "cpu")
    logits, target = cb_zs.run_classification(tiny_model, clf, batches, "cpu", amp=False)
    ref = classification_metrics(logits, target)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6)


def test_retrieval_metrics_match_clip_benchmark():
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k
    from clipa.eval.retrieval import retrieval_metrics
    g = torch.Generator().manual_seed(3)
    owner = torch.tensor([i for i in range(40) for _ in range(1 + i % 3)])  # 1 to 3 captions per image
    scores = torch.randn(len(owner), 40, generator=g)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(owner)), owner] = True
    ours = retrieval_metrics(scores, owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        img = (batchify(recall_at_k, scores, positive, 16, "cpu", k=k) > 0).float().mean().item()
        txt = (batchify(recall_at_k, scores.T, positive.T, 16, "cpu", k=k) > 0).float().mean().item()
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(img, abs=1e-7)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(txt, abs=1e-7)
