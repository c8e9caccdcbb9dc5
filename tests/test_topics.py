"""Topic builder: names of brief §2, QoS/retain table, parsing and validation."""

from __future__ import annotations

import pytest

from cloudtutor.topics import Leaf, TopicError, Topics, qos_of, retain_of, shared, unshare


def test_device_topics_follow_the_brief():
    t = Topics("cloudtutor")
    assert t.chunks("edge-0") == "cloudtutor/devices/edge-0/chunks"
    assert t.chunks_ack("edge-0") == "cloudtutor/devices/edge-0/chunks/ack"
    assert t.model_delta("edge-0") == "cloudtutor/devices/edge-0/model/delta"
    assert t.control_state("edge-0") == "cloudtutor/devices/edge-0/control/state"
    assert t.all_devices(Leaf.TELEMETRY) == "cloudtutor/devices/+/telemetry"
    assert t.service_status("ingest") == "cloudtutor/services/ingest/status"
    assert t.fleet_status() == "cloudtutor/fleet/status"
    assert shared("ingest", t.all_devices("chunks")) == "$share/ingest/cloudtutor/devices/+/chunks"
    assert unshare("$share/ingest/cloudtutor/devices/+/chunks") == "cloudtutor/devices/+/chunks"


@pytest.mark.parametrize(
    ("leaf", "qos", "retain"),
    [
        (Leaf.STATUS, 1, True), (Leaf.CHUNKS, 1, False), (Leaf.TELEMETRY, 0, False),
        (Leaf.MODEL_REPORTED, 1, True), (Leaf.CONTROL_STATE, 1, True), (Leaf.MODEL_DELTA, 1, False),
    ],
)
def test_delivery_table(leaf, qos, retain):
    for prefix in ("cloudtutor", "site-a/cloudtutor"):
        topic = Topics(prefix).device("cam-1", leaf)
        assert (qos_of(topic), retain_of(topic)) == (qos, retain)


def test_parse_round_trips_every_leaf():
    t = Topics("p")
    for leaf in Leaf:
        parsed = t.parse_device(t.device("d.1", leaf))
        assert (parsed.device_id, parsed.leaf) == ("d.1", leaf)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "-lead", "x" * 65])
def test_device_ids_that_cannot_be_topic_levels_are_refused(bad):
    with pytest.raises(TopicError):
        Topics().chunks(bad)


@pytest.mark.parametrize("topic", ["cloudtutor/devices/e1/nope", "other/devices/e1/chunks", "cloudtutor/devices//chunks"])
def test_parse_rejects_unknown_topics(topic):
    with pytest.raises(TopicError):
        Topics("cloudtutor").parse_device(topic)
