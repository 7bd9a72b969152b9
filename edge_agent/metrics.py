"""Prometheus metrics of the agent, in one registry served on a local port.

Update them per batch, not per value: a label lookup costs about a microsecond.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

VALUES_IN = Counter("ft_agent_values_in", "Values received, per source", ["source"], registry=REGISTRY)
VALUES_OUT = Counter("ft_agent_values_out", "Items acknowledged by the platform, per kind", ["kind"], registry=REGISTRY)
REJECTED = Counter("ft_agent_rejected", "Inputs refused, per source and reason", ["source", "reason"],
                   registry=REGISTRY)
DROPPED = Counter("ft_agent_dropped", "Outbox items dropped by the disk-budget policy", ["kind", "reason"],
                  registry=REGISTRY)
OUTBOX_DEPTH = Gauge("ft_agent_outbox_depth", "Items waiting in the outbox, per kind", ["kind"], registry=REGISTRY)
OUTBOX_BYTES = Gauge("ft_agent_outbox_bytes", "Bytes used by the outbox", registry=REGISTRY)
OUTBOX_OLDEST_AGE = Gauge("ft_agent_outbox_oldest_age_seconds", "Age of the oldest unacknowledged item",
                          registry=REGISTRY)
RECONNECTS = Counter("ft_agent_reconnects", "Reconnections, per source", ["source"], registry=REGISTRY)
CONNECTED = Gauge("ft_agent_source_connected", "1 while the source is connected", ["source"], registry=REGISTRY)
SIGNAL_MISSING = Counter("ft_agent_signal_missing_seconds", "Seconds each signal was missing (disconnected or bad)",
                         ["source", "signal"], registry=REGISTRY)
BAD_NODES = Gauge("ft_agent_bad_nodes", "Bound node ids the server does not know, per source", ["source"],
                  registry=REGISTRY)
ALIGN_LAG = Gauge("ft_agent_alignment_lag_seconds", "Receive time minus newest closed frame, per asset", ["node"],
                  registry=REGISTRY)
CLOCK_OFFSET = Gauge("ft_agent_clock_offset_seconds", "Estimated source clock minus gateway clock", ["source"],
                     registry=REGISTRY)
CLOCK_ABSURD = Gauge("ft_agent_clock_absurd", "1 while a source's clock is absurd (values stamped on receipt)",
                     ["source"], registry=REGISTRY)
UPLINK_BATCHES = Counter("ft_agent_uplink_batches", "Batches published, per result", ["result"], registry=REGISTRY)
UPLINK_LATENCY = Histogram("ft_agent_uplink_ack_seconds", "Publish to platform ack", registry=REGISTRY)
DIAGNOSES = Counter("ft_agent_diagnoses", "Diagnoses produced, per task and source", ["task", "source"],
                    registry=REGISTRY)
WINDOWS_SKIPPED = Counter("ft_agent_windows_skipped", "Windows not diagnosed, per task and reason",
                          ["task", "reason"], registry=REGISTRY)
DIAGNOSES_DEFERRED = Counter("ft_agent_diagnoses_deferred",
                             "Grid points not diagnosed (interval, load), per asset health", ["health"],
                             registry=REGISTRY)
INFERENCE_SECONDS = Histogram("ft_agent_inference_seconds", "Inference time of one diagnosis cycle",
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
                              registry=REGISTRY)
DIAGNOSIS_LATENCY = Histogram("ft_agent_diagnosis_latency_seconds", "Frame committed to its diagnosis stored",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=REGISTRY)
LOAD = Gauge("ft_agent_load", "Load the diagnostics watch: cpu, inference busy share, ingestion backlog share",
             ["signal"], registry=REGISTRY)
DIAGNOSIS_STRETCH = Gauge("ft_agent_diagnosis_stretch", "Diagnosis period multiplier under load, per asset health",
                          ["health"], registry=REGISTRY)
CASCADE = Counter("ft_agent_cascade", "Windows offloaded to the platform's teacher, per result", ["task", "result"],
                  registry=REGISTRY)
BASELINE_PROGRESS = Gauge("ft_agent_baseline_progress", "Per-machine baseline learnt (1 = ready)", ["node", "task"],
                          registry=REGISTRY)
MODEL_INFO = Gauge("ft_agent_model_info", "1 for the model version in use", ["asset_type", "task", "version"],
                   registry=REGISTRY)
MODEL_ROLLBACKS = Counter("ft_agent_model_rollbacks", "Models rolled back on live data, per task", ["task"],
                          registry=REGISTRY)
MODEL_SYNC = Counter("ft_agent_model_sync", "Promoted model versions handled, per task and result "
                     "(swapped, refused, failed, unreachable)", ["task", "result"], registry=REGISTRY)
