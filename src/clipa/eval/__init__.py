"""Evaluation: zero-shot classification, retrieval and linear probe, on CLIP_benchmark's definitions."""

from .linear_probe import linear_probe
from .retrieval import evaluate_retrieval, retrieval_metrics
from .runner import evaluate_set, run_evals
from .zeroshot import build_classifier, classification_metrics, evaluate_classification

__all__ = [
    "build_classifier",
    "classification_metrics",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_set",
    "linear_probe",
    "retrieval_metrics",
    "run_evals",
]
