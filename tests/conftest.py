import os
from pathlib import Path

import pytest
import torch

# Nothing downloads in tests: huggingface_hub (read at its import, which comes later) stays offline.
os.environ["HF_HUB_OFFLINE"] = "1"

SHARED = Path(os.environ.get("CLIPA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real Flickr8k, CIFAR-10, Imagenette, NLTK data), or skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED} (a fresh clone has none)")
    return SHARED


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
