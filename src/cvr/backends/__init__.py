"""Backends that train and score a model behind one interface, chosen once by `select_backend`.

| backend    | module        | what                                                         |
|------------|---------------|--------------------------------------------------------------|
| `autograd` | `autograd.py` | PyTorch forward/backward + torch.optim: any model, device, DDP |
| `fused`    | `fused.py`    | the numba CPU kernels of `cvr.kernels`: FM/FFM, one process  |

`distributed.py` holds what DDP needs besides Lightning (rank before launch, gathered
predictions, parameter checksums). Callers (CTRModule, Predictor, profiler) ask
`select_backend`; none tests model classes or catches errors to find out what can run.
"""

from cvr.backends.base import BackendError, Optimization, TrainingBackend
from cvr.backends.select import REQUESTS, fused_unsupported, select_backend

__all__ = [
    "REQUESTS",
    "BackendError",
    "Optimization",
    "TrainingBackend",
    "fused_unsupported",
    "select_backend",
]
