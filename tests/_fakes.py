"""Shared test fakes."""

import hashlib

import numpy as np


def fake_logits(ids, name: str) -> np.ndarray:
    """Deterministic pseudo-random logits float32[n,3] in [-2, 2), keyed by (name, id)."""
    out = np.empty((len(ids), 3), dtype=np.float32)
    for i, x in enumerate(ids):
        h = hashlib.sha256(f"{name}:{x}".encode()).digest()
        out[i] = np.frombuffer(h[:12], dtype=np.uint32) / 2**32 * 4 - 2
    return out


def patch_train_and_predict(monkeypatch, fake, *modules):
    """Make ``fake`` the ``train_and_predict`` of every stage module given (teachers.run, student.run, ...)."""
    for module in modules:
        monkeypatch.setattr(module, "train_and_predict", fake)
    return fake
