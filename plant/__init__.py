"""The contract both sides share: the site model, the wire messages (MQTT) and the agents' HTTP API.

Imports nothing of ours (docs/contract.md).
"""
