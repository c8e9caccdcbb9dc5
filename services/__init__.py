"""The cloud services, one package per container (`cloudtutor serve NAME`).

No service imports another: they talk through MQTT and Redis, and their
algorithms live in the `cloudtutor` library.
"""
