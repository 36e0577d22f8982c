import os

# Triton kernels run in the interpreter on machines without a GPU (CI has none).
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
