"""pytorch-fm (`torchfm`) as a benchmark peer: its FFM model, trained the way its example does.

A benchmark-only peer (`.venv/bin/pip install --no-deps torchfm`), never a project dependency.
`model_class()` imports it (None and the reason where it is not installed); `train_and_test`
trains `FieldAwareFactorizationMachineModel` on a store's rows with the recipe of pytorch-fm's
`examples/main.py`: Adam, lr 1e-3, weight decay 1e-6, batch 2048, BCE on its probabilities, the
training rows in their stored order (its loader does not shuffle), validation AUC after every
epoch, stop after 2 epochs without a better one (its `EarlyStopper(num_trials=2)`), the best
epoch's weights scored on test.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np


def model_class() -> tuple[type | None, str]:
    """torchfm's FieldAwareFactorizationMachineModel, or (None, why it cannot be imported)."""
    if not hasattr(np, "long"):
        np.long = np.int64  # torchfm uses the alias numpy 2 removed; this process only
    try:
        from torchfm.model.ffm import FieldAwareFactorizationMachineModel
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return FieldAwareFactorizationMachineModel, ""


def _probabilities(model, ids: np.ndarray, batch: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        parts = [
            model(torch.from_numpy(ids[lo : lo + batch]).long()).double().numpy()
            for lo in range(0, len(ids), batch)
        ]
    return np.clip(np.concatenate(parts), 1e-7, 1 - 1e-7)


def train_and_test(
    store,
    label: str,
    k: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    batch: int = 2048,
    max_epochs: int = 100,
    patience: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Test AUC / logloss of the best-val-AUC epoch, epochs run, best epoch (1-based), seconds."""
    import torch

    from cvr.metrics import binary_metrics

    model_type, why = model_class()
    if model_type is None:
        raise RuntimeError(f"pytorch-fm unavailable: {why}")
    torch.manual_seed(seed)
    ids = {s: np.ascontiguousarray(store.ids(s), dtype=np.int64) for s in ("train", "val", "test")}
    labels = {s: np.asarray(store.labels(s, label), dtype=np.float32) for s in ids}
    model = model_type(list(map(int, store.cardinalities)), k)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCELoss()
    best_auc, best_epoch, best_state, epochs = -np.inf, 0, None, 0
    started = time.perf_counter()
    x_train, y_train = torch.from_numpy(ids["train"]), torch.from_numpy(labels["train"])
    while epochs < max_epochs:
        model.train()
        for lo in range(0, len(x_train), batch):
            loss = loss_fn(model(x_train[lo : lo + batch]), y_train[lo : lo + batch])
            model.zero_grad()
            loss.backward()
            optimizer.step()
        epochs += 1
        model.eval()
        auc = binary_metrics(labels["val"], _probabilities(model, ids["val"], 65536))["auc"]
        if auc > best_auc:
            best_auc, best_epoch, best_state = auc, epochs, copy.deepcopy(model.state_dict())
        elif epochs - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    test = binary_metrics(labels["test"], _probabilities(model, ids["test"], 65536))
    return {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "val_auc": float(best_auc),
        "epochs_run": epochs,
        "best_epoch": best_epoch,
        "seconds": time.perf_counter() - started,
    }
