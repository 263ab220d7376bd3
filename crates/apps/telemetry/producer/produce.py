#!/usr/bin/env python3
"""A device gateway for Prism's telemetry application, in Python: writes telemetry events
straight to Kafka, following the JSON Schemas in ../schemas/ and the engine's envelope
(crates/engine/prism-events/schemas/envelope.schema.json). Nothing here comes from Prism's
Rust code: the schemas are the whole contract.

What it writes, for N devices spread over M sites (deterministic for a given --seed):

  - each device registers at its site (DeviceRegistered v1), then reports readings of the
    metrics its model measures (ReadingReported v2: measured shortly before the report; now and
    then a buffered reading measured up to 90 minutes earlier, or one without a time from a
    device without a clock), goes offline now and then (DeviceWentOffline) and comes back
    (DeviceCameBack), the first readings after that often buffered while it was away;
  - a share of the devices (--legacy-share) runs old firmware that writes ReadingReported at
    schema version 1 (no measured_at): the projector upcasts those;
  - the devices' streams are interleaved as a gateway would see them; each device's events are
    written in order, keyed by the device id (so they share a partition), aggregate_version
    1, 2, 3, ... without gaps.

Every message: topic <prefix>device.events, key = aggregate_id (the device id), value = the
envelope as UTF-8 JSON, headers event_type and schema_version repeating the envelope's.

--hostile also writes, for the first devices (one each, right before their 4th event), a
malformed JSON value, an event of an unknown aggregate type, an unknown event type, a NUL byte
in a text field, a message over the projector's 1 MiB limit, a version-1 reading carrying a
version-2 field, and a version gap (the device's 4th event is never written). The devices'
later events follow as usual: the projector must park them behind the bad message.

--events-out FILE records, one JSON object per line, what was written, in the order written:
  {"kind": "event", "value": "<the exact message value>"}
  {"kind": "hostile", "case": "...", "aggregate_id": "...", "after_version": 3,
   "expect_kind": "<dead-letter error kind>", "expect_text": ["...", ...]}
so a test's oracle folds exactly what the broker holds.

--dry-run writes nothing to Kafka (and needs no broker): only the events file, exactly as a
real run with the same arguments would record it.

SIGTERM (or SIGINT) stops it cleanly: what was handed to the client is delivered, the events
file is complete, exit status 0. A delivery failure exits with status 1.

Needs confluent-kafka (`python3 -m pip install confluent-kafka`), except with --dry-run.
"""

import argparse
import json
import random
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

AGGREGATE_TYPE = "device"
# What each model measures: metric -> (low, high) of its normal range.
MODELS = {
    "TH-200": {"temperature_c": (2.0, 24.0), "humidity_pct": (30.0, 70.0)},
    "CO2-10": {"co2_ppm": (400.0, 1400.0), "temperature_c": (18.0, 26.0)},
    "PWR-3": {"power_w": (0.0, 3000.0), "voltage_v": (226.0, 234.0)},
    "FLOW-7": {"flow_lpm": (0.0, 50.0)},
}
CITIES = ["berlin", "hamburg", "munich", "cologne", "leipzig", "dresden", "bremen", "essen"]
ROOMS = ["Cold room", "Lobby", "Server room", "Warehouse", "Kitchen", "Roof", "Kühlraum", "Büro"]
SIDES = ["north wall", "south wall", "ceiling", "door", "rack 3"]
OFFLINE_REASONS = ["battery low", "network unreachable", "maintenance", "gateway restarted", "no heartbeat for 5 minutes"]
# The projector's default events.max_event_bytes is 1 MiB; the topics accept 8 MiB.
OVERSIZE_BYTES = 1_200_000
HOSTILE_AFTER_VERSION = 3


def ts(at):
    """RFC 3339 in UTC with microseconds, as the schemas want it."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Gateway:
    """Generates the devices' streams (all of it decided by one seeded random generator)."""

    def __init__(self, seed, devices, sites, events_per_device, legacy_share, start):
        self.rng = random.Random(seed)
        self.sites = [f"{CITIES[i % len(CITIES)]}-{i // len(CITIES) + 1:02d}" for i in range(sites)]
        self.start = start
        self.streams = []
        for index in range(devices):
            self.streams.append(self.device_stream(index, events_per_device, legacy_share))

    def uuid(self):
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def device_stream(self, index, count, legacy_share):
        rng = self.rng
        device_id = self.uuid()
        site = self.sites[index % len(self.sites)]
        model = rng.choice(sorted(MODELS))
        legacy = rng.random() < legacy_share
        name = f"{rng.choice(ROOMS)} {rng.randint(1, 9)}, {rng.choice(SIDES)}"
        base = {metric: rng.uniform(low, high) for metric, (low, high) in MODELS[model].items()}
        at = self.start + timedelta(seconds=rng.uniform(0, 900))
        events = [("DeviceRegistered", 1, {"site_id": site, "model": model, "name": name}, at)]
        online, offline_since, buffered = True, None, 0
        while len(events) < count:
            at += timedelta(seconds=rng.uniform(20, 400), microseconds=rng.randrange(1_000_000))
            if not online:
                if rng.random() < 0.4:
                    events.append(("DeviceCameBack", 1, {}, at))
                    online, buffered = True, rng.randint(0, 3)
                continue
            if rng.random() < 0.06:
                reason = rng.choice(OFFLINE_REASONS)
                events.append(("DeviceWentOffline", 1, {"reason": reason}, at))
                online, offline_since = False, at
                continue
            metric = rng.choice(sorted(base))
            low, high = MODELS[model][metric]
            base[metric] = min(high, max(low, base[metric] + rng.gauss(0, (high - low) / 40)))
            value = round(base[metric], 2) + 0.0  # + 0.0: never -0.0
            if legacy:
                events.append(("ReadingReported", 1, {"site_id": site, "metric": metric, "value": value}, at))
                continue
            if buffered > 0 and offline_since is not None:
                # Measured while the device could not report, sent now.
                buffered -= 1
                measured = offline_since + (at - offline_since) * rng.random()
            elif rng.random() < 0.05:
                measured = at - timedelta(seconds=rng.uniform(600, 5400))  # a late buffered reading
            else:
                measured = at - timedelta(seconds=rng.uniform(0, 30))
            measured_at = None if rng.random() < 0.03 else ts(measured)
            payload = {"site_id": site, "metric": metric, "value": value, "measured_at": measured_at}
            events.append(("ReadingReported", 2, payload, at))
        return {"id": device_id, "events": events, "next": 0, "last_event_id": None, "correlation": self.uuid()}

    def envelope(self, stream, version_index, event_type=None, schema_version=None, payload=None):
        """The envelope of the stream's event at `version_index` (0-based), optionally altered."""
        kind, version, body, at = stream["events"][version_index]
        event_id = self.uuid()
        envelope = {
            "event_id": event_id,
            "event_type": event_type or kind,
            "schema_version": schema_version or version,
            "aggregate_type": AGGREGATE_TYPE,
            "aggregate_id": stream["id"],
            "aggregate_version": version_index + 1,
            "occurred_at": ts(at),
            "correlation_id": stream["correlation"],
            "causation_id": stream["last_event_id"] or stream["correlation"],
            "payload": body if payload is None else payload,
        }
        return envelope

    def schedule(self):
        """Device indexes in the order their next events are written: interleaved at random,
        each device's own events in order."""
        remaining = [i for i, s in enumerate(self.streams) for _ in s["events"]]
        self.rng.shuffle(remaining)
        return remaining


def encode(envelope):
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hostile_message(gateway, stream, case):
    """(value bytes, headers, expected dead-letter kind, texts its reason must contain) of a
    hostile message standing in for the stream's 4th event."""
    index = HOSTILE_AFTER_VERSION  # 0-based index of the 4th event
    if case == "malformed_json":
        value = encode(gateway.envelope(stream, index))
        return value[: len(value) // 2], headers_of("ReadingReported", 2), "invalid_json", ["not valid JSON"]
    if case == "wrong_aggregate_type":
        envelope = gateway.envelope(stream, index)
        envelope["aggregate_type"] = "sensor"
        return encode(envelope), headers_of(envelope["event_type"], envelope["schema_version"]), "invalid_value", [
            "aggregate_type", "sensor"]
    if case == "unknown_event_type":
        envelope = gateway.envelope(stream, index, event_type="DeviceTeleported", schema_version=1, payload={"to": "mars"})
        return encode(envelope), headers_of("DeviceTeleported", 1), "unknown_event_type", ["DeviceTeleported"]
    if case == "nul_in_field":
        envelope = gateway.envelope(stream, index, event_type="DeviceWentOffline", schema_version=1,
                                    payload={"reason": "battery\u0000low"})
        return encode(envelope), headers_of("DeviceWentOffline", 1), "invalid_value", [
            "payload.reason", "control characters"]
    if case == "oversize":
        envelope = gateway.envelope(stream, index, event_type="DeviceWentOffline", schema_version=1,
                                    payload={"reason": "x" * OVERSIZE_BYTES})
        return encode(envelope), headers_of("DeviceWentOffline", 1), "too_large", ["over the limit of 1048576 bytes"]
    if case == "v2_field_in_v1":
        envelope = gateway.envelope(stream, index, event_type="ReadingReported", schema_version=1, payload={
            "site_id": gateway.sites[0], "metric": "temperature_c", "value": 1.5, "measured_at": ts(gateway.start)})
        return encode(envelope), headers_of("ReadingReported", 1), "upcast_failed", ["ReadingReported", "measured_at"]
    raise ValueError(case)


HOSTILE_CASES = ["malformed_json", "wrong_aggregate_type", "unknown_event_type", "nul_in_field", "oversize",
                 "v2_field_in_v1", "version_gap"]


def headers_of(event_type, schema_version):
    return [("event_type", event_type.encode()), ("schema_version", str(schema_version).encode())]


def kafka_producer(bootstrap):
    """An idempotent producer (acks=all, order kept per partition) that accepts the oversize
    hostile message (the topics take 8 MiB)."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        sys.stderr.write("produce.py needs the confluent-kafka package: python3 -m pip install confluent-kafka\n")
        sys.exit(3)
    return Producer({
        "bootstrap.servers": bootstrap,
        "client.id": "telemetry-produce.py",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.max.bytes": 8388608,
    })


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic-prefix", default="", help="topic prefix (topics.prefix of the deployment)")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--events-per-device", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--legacy-share", type=float, default=0.2, help="share of devices writing ReadingReported v1")
    parser.add_argument("--start", default="2026-03-01T00:00:00Z", help="time of the first registration (UTC)")
    parser.add_argument("--rate", type=float, default=0, help="events per second (0: as fast as possible)")
    parser.add_argument("--hostile", action="store_true", help="also write hostile messages (see above)")
    parser.add_argument("--events-out", help="record what was written, as JSON lines")
    parser.add_argument("--dry-run", action="store_true", help="no Kafka: only record what would be written")
    args = parser.parse_args()
    if args.devices < 1 or args.sites < 1 or args.events_per_device < 1:
        parser.error("--devices, --sites and --events-per-device must be at least 1")
    if args.hostile and (args.devices < len(HOSTILE_CASES) or args.events_per_device < HOSTILE_AFTER_VERSION + 3):
        parser.error(f"--hostile needs at least {len(HOSTILE_CASES)} devices of {HOSTILE_AFTER_VERSION + 3} events")

    stop = {"requested": False}

    def request_stop(signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    gateway = Gateway(args.seed, args.devices, args.sites, args.events_per_device, args.legacy_share, start)
    topic = f"{args.topic_prefix}{AGGREGATE_TYPE}.events"
    producer = None if args.dry_run else kafka_producer(args.bootstrap)
    failures = []

    def delivered(err, msg):
        if err is not None:
            failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(key, value, headers):
        if producer is None:
            return
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    out = open(args.events_out, "w", encoding="utf-8") if args.events_out else None

    def record(line):
        if out is not None:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")

    victims = {}
    if args.hostile:
        for case, stream in zip(HOSTILE_CASES, gateway.streams):
            victims[stream["id"]] = case
    written, began = 0, time.monotonic()
    for device in gateway.schedule():
        if stop["requested"] or failures:
            break
        stream = gateway.streams[device]
        index = stream["next"]
        stream["next"] += 1
        case = victims.get(stream["id"])
        if case is not None and index == HOSTILE_AFTER_VERSION:
            if case == "version_gap":
                record({"kind": "hostile", "case": case, "aggregate_id": stream["id"],
                        "after_version": HOSTILE_AFTER_VERSION, "expect_kind": "version_gap",
                        "expect_text": [f"expected version {HOSTILE_AFTER_VERSION + 1}, got {HOSTILE_AFTER_VERSION + 2}"]})
                continue  # the 4th event is never written
            value, headers, kind, texts = hostile_message(gateway, stream, case)
            send(stream["id"], value, headers)
            record({"kind": "hostile", "case": case, "aggregate_id": stream["id"],
                    "after_version": HOSTILE_AFTER_VERSION, "expect_kind": kind, "expect_text": texts})
        envelope = gateway.envelope(stream, index)
        stream["last_event_id"] = envelope["event_id"]
        value = encode(envelope)
        send(stream["id"], value, headers_of(envelope["event_type"], envelope["schema_version"]))
        record({"kind": "event", "value": value.decode("utf-8")})
        written += 1
        if args.rate > 0:
            ahead = began + written / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(60) if producer is not None else 0
    if out is not None:
        out.close()
    if remaining or failures:
        sys.stderr.write(f"produce.py: {remaining} message(s) undelivered; failures: {failures[:5]}\n")
        return 1
    sys.stderr.write(f"produce.py: {'recorded (dry run, nothing sent)' if args.dry_run else 'wrote'} {written} events"
                     f" to {topic} in {time.monotonic() - began:.1f}s{' (stopped early)' if stop['requested'] else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
