"""Evaluation: zero-shot classification, retrieval and linear probe, on CLIP_benchmark's definitions."""

from .zeroshot import build_classifier, classification_metrics, evaluate_classification

__all__ = ["build_classifier", "classification_metrics", "evaluate_classification"]
