-- Appends a batch of events and their outbox rows in one statement, then wakes the relay.
-- Arrays are parallel, one element per event, in append order. The outbox rows are inserted
-- in that order too (WITH ORDINALITY + ORDER BY), so their ids follow the versions of each
-- aggregate. A version that already exists violates events_stream_version: the caller turns
-- that into a concurrency conflict.
WITH appended AS (
    INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
                        schema_version, occurred_at, correlation_id, causation_id, payload)
    SELECT e.event_id, e.aggregate_type, e.aggregate_id, e.aggregate_version, e.event_type,
           e.schema_version, e.occurred_at, e.correlation_id, e.causation_id, e.payload
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::int4[],
                $7::timestamptz[], $8::uuid[], $9::uuid[], $10::jsonb[])
         WITH ORDINALITY AS e(event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
                              schema_version, occurred_at, correlation_id, causation_id, payload, ord)
    ORDER BY e.ord
    RETURNING event_id
),
queued AS (
    INSERT INTO outbox (event_id, lane, topic, message_key, message_value)
    SELECT o.event_id, o.lane, o.topic, o.message_key, o.message_value
    FROM unnest($1::uuid[], $11::int2[], $12::text[], $13::text[], $14::bytea[])
         WITH ORDINALITY AS o(event_id, lane, topic, message_key, message_value, ord)
    -- Referencing `appended` orders the two inserts: the outbox's foreign key sees the events.
    WHERE o.event_id IN (SELECT event_id FROM appended)
    ORDER BY o.ord
    RETURNING id
)
SELECT (SELECT count(*) FROM queued) AS queued FROM pg_notify($15, '') AS notify
