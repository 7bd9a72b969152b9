"""The edge agent: runs on a factory gateway, ingests PLC/SCADA telemetry, aligns it, diagnoses, forwards."""
