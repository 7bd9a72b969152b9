"""On-device diagnostics: aligned frames → windows → models → Diagnosis, and the models the agent keeps.

- ``diagnose.py``: the Diagnoser, the pipeline stage that takes each asset's frames through its models;
- ``windows.py``: frames → model windows; ``targets.py``: what each asset is diagnosed for;
- ``scoring.py``: one model's windows on the inference thread → Diagnosis;
- ``load.py``: load awareness (diagnose less often under pressure, so ingestion never falls behind);
- ``baseline.py``: per-machine anomaly baselines;
- ``model_slots.py``: the models in use, checked before use, rolled back on failure;
- ``model_sync.py``: the model versions the platform promotes, fetched and swapped in.
"""

from edge_agent.diagnostics.diagnose import Diagnoser
from edge_agent.diagnostics.model_sync import ModelSync

__all__ = ["Diagnoser", "ModelSync"]
