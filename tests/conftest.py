import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch

# Tiny models gain nothing from a second thread, and OpenMP spin-waiting makes them
# ~100x slower whenever another process holds a core.
torch.set_num_threads(1)


# Shared fixtures of the scoring and generation tests (a module may define its own instead).
@pytest.fixture(scope="module")
def tok() -> Any:
    """The tiny tokenizer with a chat template."""
    from melbo.testing import tiny_tokenizer

    return tiny_tokenizer(with_chat_template=True)


@pytest.fixture(scope="module")
def llama(tok: Any) -> torch.nn.Module:
    """A tiny random-init Llama over ``tok``'s vocabulary."""
    from tiny_models import tiny_model

    return tiny_model("llama", vocab=len(tok))
