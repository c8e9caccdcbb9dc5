"""Shared fixtures: one real Mosquitto and one real Redis per test session.

Tests isolate themselves by name, not by server: ``topics`` has a topic
prefix of its own per test (retained messages of one test never reach
another), ``redis_settings`` a key prefix of its own, and ``redis_client``
starts from an empty database. Tests that kill, pause or restart a server
start a private one (``MosquittoServer()`` in the test) instead of touching
these.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtutor.config.common import MqttSettings, RedisSettings, default_data_root
from cloudtutor.testing.servers import MosquittoServer, RedisServer
from cloudtutor.topics import Topics


@pytest.fixture(autouse=True)
def _denormals_back_on() -> Iterator[None]:
    """Undo ``torch.set_flush_denormal(True)`` after each test.

    Student and teacher turn it on process-wide (it is a 13x speed-up on the
    ESPNet checkpoint); left on, it leaks into later tests, and hypothesis
    refuses to draw floats when subnormals cannot be represented.
    """
    yield
    import sys

    torch = sys.modules.get("torch")  # only if a test imported it
    if torch is not None:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    with MosquittoServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def topics() -> Topics:
    """Topic names under a prefix of this test's own."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def mqtt_settings(mosquitto: MosquittoServer) -> MqttSettings:
    """Settings for the session broker, with short reconnect delays."""
    return mosquitto.mqtt_settings(reconnect_min_s=0.1, reconnect_max_s=1.0, connect_timeout_s=20.0)


@pytest.fixture
def redis_settings(redis_server: RedisServer) -> RedisSettings:
    """Settings for the session Redis, with a key prefix of this test's own."""
    return redis_server.redis_settings(key_prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    """A binary-safe redis-py client on an empty database."""
    import redis  # only the cloud side has redis-py

    client = redis.Redis.from_url(redis_server.url, decode_responses=False)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The evaluation material: $CLOUDTUTOR_DATA, else ``shared/data`` beside the checkout."""
    root = default_data_root()
    if not root.is_dir():
        pytest.skip(f"data folder {root} is missing (set CLOUDTUTOR_DATA)")
    return root
