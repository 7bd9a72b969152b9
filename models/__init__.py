"""Diagnostic models: training, distillation, ONNX export, registry and the edge runtime.

Only ``models.runtime`` (with ``models.features``, ``models.registry`` and ``models.errors``) is needed on the
edge; it imports numpy and onnxruntime, never scikit-learn or pandas.
"""
