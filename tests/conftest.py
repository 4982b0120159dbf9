import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same numpy and torch RNG state."""
    np.random.seed(0)
    torch.manual_seed(0)
