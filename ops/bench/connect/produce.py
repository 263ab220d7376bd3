#!/usr/bin/env python3
"""Publishes synthetic Prism events in the record format the Debezium JDBC sink consumes.

The reference for that format (README.md, "Record format"): key and value are JSON with an
inline Connect schema. It exists to try the harness by hand; Prism's Rust benchmark produces
the same records itself.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install confluent-kafka
    /tmp/venv/bin/python ops/bench/connect/produce.py --bootstrap 127.0.0.1:9092 \
        --topics lab.order.events,lab.cart.events --events 100000 --keys 25000 \
        --expect /tmp/expected.csv

Aggregates are spread evenly over the topics (one aggregate type per topic, like Prism's
<aggregate_type>.events). --expect writes the newest event of every aggregate (topic,
aggregate_id, aggregate_version, event_id): what one row per key must hold after the sink ran.
"""

import argparse
import csv
import json
import random
import sys
import uuid
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer

# The Connect schemas, serialised once: JsonConverter (schemas.enable=true) reads
# {"schema": ..., "payload": ...}. Every field is a string, an int32 or an int64 on the wire;
# the Debezium semantic type names (README.md) only choose the column types the sink creates:
# uuid, timestamptz and jsonb instead of text. --plain leaves them out (all text columns).
# No struct names: the sink needs none, and a value schema named *.Envelope or
# *CloudEvents.Envelope would be taken for a Debezium change event. "optional" is left out
# where false (JsonConverter's default): every record carries its schema, and most of the JVM's
# time goes into parsing it, so shorter is faster.
UUID = {"name": "io.debezium.data.Uuid"}
TIMESTAMP = {"name": "io.debezium.time.ZonedTimestamp"}
JSONB = {"name": "io.debezium.data.Json", "parameters": {"__debezium.source.column.type": "JSONB"}}


def schemas(typed):
    def f(name, type_, semantic=None, optional=False):
        field = {"field": name, "type": type_}
        if typed and semantic:
            field.update(semantic)
        if optional:
            field["optional"] = True
        return field

    key = {"type": "struct", "fields": [f("aggregate_id", "string", UUID)]}
    value = {
        "type": "struct",
        "fields": [
            f("event_id", "string", UUID),
            f("event_type", "string"),
            f("schema_version", "int32"),
            f("aggregate_type", "string"),
            f("aggregate_id", "string", UUID),
            f("aggregate_version", "int64"),
            f("occurred_at", "string", TIMESTAMP),
            f("correlation_id", "string", UUID, optional=True),
            f("causation_id", "string", UUID, optional=True),
            f("payload", "string", JSONB),
        ],
    }
    return key, value


COMPACT = {"separators": (",", ":")}


def prefixes(typed):
    key, value = schemas(typed)
    return ('{"schema":' + json.dumps(key, **COMPACT) + ',"payload":',
            '{"schema":' + json.dumps(value, **COMPACT) + ',"payload":')


EVENT_TYPES = ["Created", "Updated", "ItemAdded", "ItemRemoved", "Renamed", "Closed"]


def record(envelope, key_prefix, value_prefix):
    """The Kafka key and value of one Prism event envelope (payload: a nested object)."""
    key = key_prefix + json.dumps({"aggregate_id": envelope["aggregate_id"]}, **COMPACT) + "}"
    flat = dict(envelope)
    flat["payload"] = json.dumps(envelope["payload"], **COMPACT)
    value = value_prefix + json.dumps(flat, **COMPACT) + "}"
    return key.encode(), value.encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topics", required=True, help="comma-separated; one aggregate type each")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=25_000, help="distinct aggregates over all topics")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expect", help="CSV of the newest event per aggregate")
    ap.add_argument("--plain", action="store_true", help="no semantic types: text columns only")
    args = ap.parse_args()
    key_prefix, value_prefix = prefixes(not args.plain)

    rng = random.Random(args.seed)
    topics = args.topics.split(",")
    aggregates = []  # (topic, aggregate_type, aggregate_id)
    for i in range(args.keys):
        topic = topics[i % len(topics)]
        agg_type = topic.split(".")[-2] if topic.count(".") >= 1 else topic
        aggregates.append((topic, agg_type, str(uuid.UUID(int=rng.getrandbits(128), version=4))))
    version = [0] * len(aggregates)
    last = {}
    t0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=timezone.utc)

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,  # keeps the order of each partition, so last write wins
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
    })
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(err)

    for n in range(args.events):
        # Every aggregate gets at least one event, then a skewed mix (some aggregates are hot).
        i = n if n < len(aggregates) else min(int(rng.paretovariate(1.2)) - 1, len(aggregates) - 1) \
            if rng.random() < 0.2 else rng.randrange(len(aggregates))
        topic, agg_type, agg_id = aggregates[i]
        version[i] += 1
        envelope = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": agg_type.capitalize() + rng.choice(EVENT_TYPES),
            "schema_version": 1,
            "aggregate_type": agg_type,
            "aggregate_id": agg_id,
            "aggregate_version": version[i],
            "occurred_at": (t0 + timedelta(microseconds=n * 1237)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "correlation_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "causation_id": None,
            "payload": {
                "customer": {"id": rng.randrange(10_000), "tier": rng.choice(["gold", "basic"])},
                "items": [{"sku": f"SKU-{rng.randrange(5000):05d}", "qty": rng.randrange(1, 5),
                           "price_cents": rng.randrange(100, 20_000)} for _ in range(rng.randrange(1, 4))],
                "note": None,
            },
        }
        key, value = record(envelope, key_prefix, value_prefix)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        last[(topic, agg_id)] = (version[i], envelope["event_id"])
    left = producer.flush(60)
    if left or failed:
        sys.exit(f"produce.py: {left} records not delivered, {len(failed)} failed ({failed[:1]})")

    if args.expect:
        with open(args.expect, "w", newline="") as f:
            w = csv.writer(f)
            for (topic, agg_id), (ver, event_id) in sorted(last.items()):
                w.writerow([topic, agg_id, ver, event_id])
    print(f"produced {args.events} events, {len(last)} aggregates, {len(topics)} topics", file=sys.stderr)


if __name__ == "__main__":
    main()
