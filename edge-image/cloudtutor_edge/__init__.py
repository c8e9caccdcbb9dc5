"""The edge agent (`cloudtutor edge`): student inference, sampling, encoding,
model hot swap. Depends on the `[edge]` extra only (no Redis client, no TFLite).
"""
