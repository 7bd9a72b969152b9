"""The platform: the digital twin, its store, ingest, alerts, advice, webhooks, REST API and dashboard."""
