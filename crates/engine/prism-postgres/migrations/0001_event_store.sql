-- The write side: the event store, the transactional outbox and command idempotency.

-- Every event ever decided, append-only. The unique (aggregate_type, aggregate_id,
-- aggregate_version) constraint is the optimistic concurrency check: of two commands racing
-- on one aggregate, exactly one appends each version.
CREATE TABLE events (
    global_position   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          uuid        NOT NULL UNIQUE,
    aggregate_type    text        NOT NULL,
    aggregate_id      uuid        NOT NULL,
    aggregate_version bigint      NOT NULL CHECK (aggregate_version >= 1),
    event_type        text        NOT NULL,
    schema_version    integer     NOT NULL CHECK (schema_version >= 1),
    occurred_at       timestamptz NOT NULL,
    correlation_id    uuid        NOT NULL,
    causation_id      uuid        NOT NULL,
    payload           jsonb       NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (aggregate_type, aggregate_id, aggregate_version)
);

-- One row per event still to be published, written in the same transaction as the event.
-- The relay publishes a lane's rows in id order (which is version order per aggregate) and
-- deletes them once the broker has acknowledged them.
CREATE TABLE outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE REFERENCES events (event_id),
    -- hash of the aggregate id modulo the fixed lane count: at most one relay instance
    -- publishes a lane at a time, so one aggregate's events are never published out of order.
    lane          smallint    NOT NULL,
    topic         text        NOT NULL,
    message_key   text        NOT NULL,
    -- the exact envelope bytes to publish, so a re-publication is byte-identical
    message_value bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_by_lane ON outbox (lane, id);

-- The first successful response to a command sent with an Idempotency-Key header.
CREATE TABLE command_idempotency (
    idempotency_key     text        PRIMARY KEY,
    -- method, path and body digest of the first request: the same key with another
    -- request is a client bug, answered with 422 rather than the stored response
    request_fingerprint text        NOT NULL,
    response_status     smallint    NOT NULL,
    response_body       jsonb       NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX command_idempotency_by_age ON command_idempotency (created_at);
