"""Turn result tensors into JSON-ready values: numpy arrays (fast to serialize), non-finite values as strings."""
from __future__ import annotations

import numpy as np
import torch

NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def encode_tensor(t: torch.Tensor, warnings: list[str], where: str):
    """A tensor as a numpy array/scalar; if any value is non-finite, a list with "NaN"/"Infinity" strings and a warning."""
    arr = t.detach().cpu()
    if not arr.is_floating_point():
        arr = arr.double()
    arr = arr.contiguous().numpy()
    finite = np.isfinite(arr)
    if finite.all():
        return arr[()] if arr.ndim == 0 else arr
    bad = int(arr.size - finite.sum())
    warnings.append(f"{where}: {bad} of {arr.size} value(s) not finite")
    out = arr.astype(object)
    out[np.isnan(arr)] = "NaN"
    out[arr == np.inf] = "Infinity"
    out[arr == -np.inf] = "-Infinity"
    return out[()] if arr.ndim == 0 else out.tolist()


def encode_tree(obj, warnings: list[str], where: str = ""):
    """Walk dicts and lists, encoding every tensor (and non-finite float) in place of its path."""
    if isinstance(obj, torch.Tensor):
        return encode_tensor(obj, warnings, where)
    if isinstance(obj, float):
        return encode_tensor(torch.tensor(obj, dtype=torch.float64), warnings, where)
    if isinstance(obj, dict):
        return {k: encode_tree(v, warnings, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_tree(v, warnings, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj
