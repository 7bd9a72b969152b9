"""Alerts: rules from the site model, an ISA-18.2 lifecycle, noise control, and the engine that runs them.

    rules.py       what each kind of rule says about an asset (limits, rates, stale data, diagnoses...)
    lifecycle.py   alert states and transitions, each stored with who, when and why
    noise.py       flapping, grouping by shared cause, alarm rate per 10 minutes
    engine.py      store changes and the clock → rules → lifecycle, in the caller's transaction
    evaluator.py   the one engine per database: leader election, fed from the database, the alert clock
    listing.py     what people look up: the filtered list of alerts, the badge's counts
    feedback.py    what people found about an alert, kept as labels for retraining

The platform runs it through ``AlertEvaluator`` (twin/platform.py); by hand, in one process::

    engine = AlertEngine(site)
    with sessionmaker() as s, s.begin():
        engine.load(s)                                       # once, at start: take up open alerts
    result = store.apply(batch)                              # after each ingested batch
    with sessionmaker() as s, s.begin():
        engine.process(s, result.changes, result.diagnoses)  # alerts, transitions, webhook rows: one commit
    worker.wake()                                            # the app's twin.webhooks.DeliveryWorker
    with sessionmaker() as s, s.begin():
        engine.tick(s)                                       # every few seconds: stale data, delays, shelves
"""

from twin.alerts.engine import AlertEngine, NoiseConfig
from twin.alerts.rules import PropertyChange

__all__ = ["AlertEngine", "NoiseConfig", "PropertyChange"]
