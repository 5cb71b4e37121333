import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch

# Tiny models gain nothing from a second thread, and OpenMP spin-waiting makes them
# ~100x slower whenever another process holds a core.
torch.set_num_threads(1)
