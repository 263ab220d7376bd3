-- The read side's bookkeeping: generations of each projection, the version gate, dead
-- letters and the aggregates parked behind them. A "projection instance" below is
-- <projection>_g<generation>, e.g. order_summary_g1: blue/green rebuilds run a new
-- generation beside the active one, each with its own tables, gate rows and dead letters.

-- Which generation of each projection exists, is being built, or serves queries.
CREATE TABLE projection_generations (
    projection   text        NOT NULL,
    generation   integer     NOT NULL CHECK (generation >= 1),
    status       text        NOT NULL CHECK (status IN ('building', 'active', 'retired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    PRIMARY KEY (projection, generation)
);
CREATE UNIQUE INDEX projection_generations_one_active
    ON projection_generations (projection) WHERE status = 'active';

-- The version gate: the last aggregate version each projection instance applied, written in
-- the same transaction as the view rows. Events at or below it are duplicates.
CREATE TABLE projection_gate (
    projection     text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   uuid   NOT NULL,
    last_version   bigint NOT NULL CHECK (last_version >= 0),
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);

-- Events a projection instance could not apply, and the events parked behind them.
-- The record of truth for `prismctl dlq`; the <topic>.dlq topics carry copies for Kafka tools.
CREATE TABLE dead_letters (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection        text        NOT NULL,
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    message_key       bytea,
    message_value     bytea,
    -- known when the event decoded far enough; NULL for undecodable bytes
    aggregate_type    text,
    aggregate_id      uuid,
    aggregate_version bigint,
    event_type        text,
    -- 'permanent' (the event itself is bad) or 'parked' (waiting behind one that is)
    error_class       text        NOT NULL CHECK (error_class IN ('permanent', 'parked')),
    -- bounded kind: a decode error kind, 'unprojectable', 'version_gap' or 'parked'
    error_kind        text        NOT NULL,
    error_message     text        NOT NULL,
    status            text        NOT NULL DEFAULT 'open'
                                  CHECK (status IN ('open', 'redriven', 'discarded')),
    dead_lettered_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    -- whether the copy in the dead-letter topic has been acknowledged by the broker
    published         boolean     NOT NULL DEFAULT false,
    UNIQUE (projection, source_topic, source_partition, source_offset)
);
CREATE INDEX dead_letters_open_by_aggregate
    ON dead_letters (projection, aggregate_type, aggregate_id, id) WHERE status = 'open';
CREATE INDEX dead_letters_unpublished ON dead_letters (projection, id) WHERE NOT published;

-- Aggregates whose later events wait behind an open dead letter, per projection instance.
-- Checked under a row lock by every batch, so parking and redriving never race.
CREATE TABLE parked_aggregates (
    projection     text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);
