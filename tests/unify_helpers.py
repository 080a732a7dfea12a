"""Fixtures shared by the unify tests (imported by name into the test modules that use them)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Training on shared cores: one thread per process is several times faster than two waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
