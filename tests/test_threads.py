"""helpers.threads.torch_threads: the count inside the block, and the old count after it."""

from __future__ import annotations

import pytest
import torch

from helpers.threads import torch_threads


def test_the_count_is_set_inside_and_restored_after_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(KeyError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [0, -1, 1.0, True, "1"])
def test_a_count_that_is_not_a_positive_int_is_refused(n):
    with pytest.raises(ValueError, match="positive int"):
        with torch_threads(n):
            pass
