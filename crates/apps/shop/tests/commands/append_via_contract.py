#!/usr/bin/env python3
"""A command service in another language: appends shop events to Prism's event store through
the documented SQL contract alone (crates/engine/prism-event-store/CONTRACT.md), with psycopg 3.

It registers one user (UserRegistered, schema version 2) and changes the profile
(UserProfileChanged, version 1) as two commands, each one transaction: the event row, the outbox
row (lane = FNV-1a of the aggregate id mod 16, topic, key, the exact envelope bytes) and a NOTIFY
to wake the relay. Then it loses a race on purpose: a third command decided on version 1 tries
to append version 2 again, and the unique constraint refuses it.

Prints one JSON document on stdout: what it wrote (with the exact message bytes, in hex) and
what the race did. Exits non-zero on anything unexpected.

    append_via_contract.py --dsn postgres://... --schema prism --topic-prefix "" --user-id <uuid>
"""

import argparse
import datetime
import json
import sys
import uuid

import psycopg
from psycopg import errors, sql

OUTBOX_LANES = 16

# The contract's test vectors: (aggregate id, 64-bit hash, lane).
VECTORS = [
    ("00000000-0000-0000-0000-000000000000", 0x88201FB960FF6465, 5),
    ("0b6f3c9e-6a3d-4a57-9d8e-2f1c7e5b9a10", 0xA6BEE0709843828A, 10),
    ("123e4567-e89b-12d3-a456-426614174000", 0x7F0C9AD0139933E0, 0),
    ("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b", 0xDDFF4C6E6F0D7B59, 9),
    ("ffffffff-ffff-ffff-ffff-ffffffffffff", 0xD6607508F5A1E855, 5),
]


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def outbox_lane(aggregate_id: uuid.UUID) -> int:
    return fnv1a64(aggregate_id.bytes) % OUTBOX_LANES


def now_micros() -> str:
    """UTC, whole microseconds, RFC 3339 with Z: the precision PostgreSQL keeps."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope_bytes(envelope: dict) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def current_version(cur, aggregate_type: str, aggregate_id: uuid.UUID) -> int:
    cur.execute(
        "SELECT coalesce(max(aggregate_version), 0) FROM events WHERE aggregate_type = %s AND aggregate_id = %s",
        (aggregate_type, aggregate_id),
    )
    return cur.fetchone()[0]


def append(conn, schema: str, topic_prefix: str, aggregate_type: str, aggregate_id: uuid.UUID,
           expected_version: int, events: list) -> list:
    """Appends `events` [(event_type, schema_version, payload)] after `expected_version`, in one
    transaction. Returns what was written, per event."""
    command_id = str(uuid.uuid4())
    correlation_id = str(uuid.uuid4())
    occurred_at = now_micros()
    written = []
    with conn.transaction():
        with conn.cursor() as cur:
            for offset, (event_type, schema_version, payload) in enumerate(events):
                envelope = {
                    "event_id": str(uuid.uuid4()),
                    "event_type": event_type,
                    "schema_version": schema_version,
                    "aggregate_type": aggregate_type,
                    "aggregate_id": str(aggregate_id),
                    "aggregate_version": expected_version + offset + 1,
                    "occurred_at": occurred_at,
                    "correlation_id": correlation_id,
                    "causation_id": command_id,
                    "payload": payload,
                }
                value = envelope_bytes(envelope)
                cur.execute(
                    """INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
                                           schema_version, occurred_at, correlation_id, causation_id, payload)
                       VALUES (%s, %s, %s, %s, %s, %s, %s::timestamptz, %s, %s, %s::jsonb)""",
                    (
                        envelope["event_id"], aggregate_type, aggregate_id, envelope["aggregate_version"], event_type,
                        schema_version, occurred_at, correlation_id, command_id, json.dumps(payload),
                    ),
                )
                lane = outbox_lane(aggregate_id)
                topic = f"{topic_prefix}{aggregate_type}.events"
                key = str(aggregate_id)
                cur.execute(
                    "INSERT INTO outbox (event_id, lane, topic, message_key, message_value) VALUES (%s, %s, %s, %s, %s)",
                    (envelope["event_id"], lane, topic, key, value),
                )
                written.append({
                    "event_id": envelope["event_id"],
                    "event_type": event_type,
                    "schema_version": schema_version,
                    "aggregate_version": envelope["aggregate_version"],
                    "occurred_at": occurred_at,
                    "correlation_id": correlation_id,
                    "causation_id": command_id,
                    "payload": payload,
                    "lane": lane,
                    "topic": topic,
                    "key": key,
                    "value_hex": value.hex(),
                })
            cur.execute("SELECT pg_notify(%s, '')", (f"prism_outbox_{schema}",))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--user-id", required=True, type=uuid.UUID)
    args = parser.parse_args()

    for text, expected_hash, expected_lane in VECTORS:
        got = fnv1a64(uuid.UUID(text).bytes)
        if got != expected_hash or got % OUTBOX_LANES != expected_lane:
            print(f"lane test vector {text}: got {got:#x} lane {got % OUTBOX_LANES}", file=sys.stderr)
            return 1

    user = args.user_id
    short = user.hex[:8]
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(args.schema)))
        with conn.cursor() as cur:
            if current_version(cur, "user", user) != 0:
                print(f"user {user} already has events", file=sys.stderr)
                return 1

        # Command 1: register (version 1).
        written = append(conn, args.schema, args.topic_prefix, "user", user, 0, [
            ("UserRegistered", 2, {
                "email": f"py-{short}@example.com",
                "display_name": "Written in Python",
                "marketing_opt_in": True,
            }),
        ])
        # Command 2: change the profile, deciding on the version it reads (1).
        with conn.cursor() as cur:
            version = current_version(cur, "user", user)
        written += append(conn, args.schema, args.topic_prefix, "user", user, version, [
            ("UserProfileChanged", 1, {
                "email": f"changed-{short}@example.com",
                "display_name": "Python, changed",
            }),
        ])

        # Command 3 decided on version 1 too, and loses the race for version 2.
        race = {"conflict": False, "constraint": None, "sqlstate": None}
        try:
            append(conn, args.schema, args.topic_prefix, "user", user, 1, [
                ("UserProfileChanged", 1, {"display_name": "Lost the race"}),
            ])
        except errors.UniqueViolation as err:
            race = {"conflict": True, "constraint": err.diag.constraint_name, "sqlstate": err.sqlstate}
        with conn.cursor() as cur:
            final_version = current_version(cur, "user", user)

    json.dump({"written": written, "race": race, "final_version": final_version}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
