"""The contract both sides share: the site model and the wire messages. Imports nothing of ours."""
