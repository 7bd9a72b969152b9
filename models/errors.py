"""Errors of the models package; onnxruntime and file errors are translated where those are called.

ModelError
├── DataError          a data file is unreadable, of an unknown format, or lacks columns
├── TrainingError      a model cannot be trained from the data given (too few rows, one class)
├── ModelLoadError     a model directory is missing files, or its sha256 or schema does not match
├── WindowRejected     one input window refused (missing signal, NaN, wrong length, wrong unit)
└── InferenceError     onnxruntime failed on a window that passed validation
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of every error raised by models/."""


class DataError(ModelError):
    """A data file is unreadable, of an unknown format, or lacks columns."""


class TrainingError(ModelError):
    """A model cannot be trained from the data given."""


class ModelLoadError(ModelError):
    """A model directory cannot be used: files missing, sha256 or schema mismatch."""


class WindowRejected(ModelError):
    """One input window was refused; ``reason`` is a short stable code for metrics.

    Args:
        reason: stable code, one of ``missing_signal``, ``nan``, ``wrong_length``, ``wrong_unit``,
            ``bad_value``.
        detail: human-readable explanation naming the signal.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InferenceError(ModelError):
    """onnxruntime failed on a window that passed validation."""
