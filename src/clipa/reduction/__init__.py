"""CLIPA token reduction: fewer image patches and shorter captions in training."""
