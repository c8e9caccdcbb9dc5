"""cloudtutor: the project's common library.

Wire formats, topics, configuration, the MQTT bus, the Redis frame buffer,
models and the pure algorithm code that the cloud services and the edge
agent are thin loops around.
"""

__version__ = "0.1.0"
