-- Ranges of a source partition a projection instance loads in bulk: the events an in-place
-- rebuild cleared, or everything before the end seen when a blue/green generation was
-- registered. `prismctl rebuild` inserts them in the transaction that clears or registers the
-- instance; a worker maintaining the instance reads the range directly from the partition,
-- folds it in memory and writes each chunk set-based, moving `loaded_to` in the same
-- transaction (so a chunk lands once, whoever loads it and however often it is interrupted).
-- Until `loaded_to` reaches `end_offset`, no batch of the partition is applied to the instance.
-- `settled_to` follows `loaded_to` once a chunk's later steps (its cache entries, its dead
-- letters' copies on the dead-letter topic, healing) are done too: a worker that died between
-- a chunk's commit and those steps leaves `settled_to` behind, and whoever loads the range next
-- redelivers that part first, as the consumer group redelivers a batch whose offsets were
-- never committed.
CREATE TABLE IF NOT EXISTS projection_replays (
    projection       text        NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    start_offset     bigint      NOT NULL,
    end_offset       bigint      NOT NULL,
    loaded_to        bigint      NOT NULL,
    settled_to       bigint      NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    loaded_at        timestamptz,
    PRIMARY KEY (projection, source_topic, source_partition),
    CHECK (start_offset <= settled_to AND settled_to <= loaded_to AND loaded_to <= end_offset)
);
