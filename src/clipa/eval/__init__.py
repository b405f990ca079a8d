"""Evaluation: zero-shot classification, retrieval and linear probe, on CLIP_benchmark's definitions."""

from .linear_probe import linear_probe
from .retrieval import evaluate_retrieval, retrieval_metrics
from .runner import EvalOptions, evaluate_run, evaluate_set
from .zeroshot import build_classifier, classification_metrics, evaluate_classification

__all__ = [
    "EvalOptions",
    "build_classifier",
    "classification_metrics",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_set",
    "linear_probe",
    "retrieval_metrics",
    "evaluate_run",
]
