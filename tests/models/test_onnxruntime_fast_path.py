"""The runtime's fast path relies on onnxruntime's undocumented ``InferenceSession._sess.run``.

If an onnxruntime upgrade drops or changes it, the runtime falls back to the public ``run`` and stays correct but
slower; this test makes such an upgrade fail loudly here instead of silently costing the edge its latency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import runtime


def test_the_installed_onnxruntime_offers_the_fast_path_and_it_agrees_with_run(committed: Path) -> None:
    model = runtime.load(committed)
    session = model._session
    run = runtime._bound_run(session)
    assert run != session.run, "onnxruntime no longer has InferenceSession._sess.run: the runtime is on its slow path"
    window = model.probe_window()  # a window the model accepts (settings in a regime it knows)
    feed = {session.get_inputs()[0].name: model.model_input(window), **model._feed}
    outputs = [model._output]
    np.testing.assert_array_equal(run(outputs, feed)[0], session.run(outputs, feed)[0])
