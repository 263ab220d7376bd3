-- Creates the gate rows of aggregates the batch met for the first time, at the state the batch
-- left them in. None of them existed when the batch locked its gate rows; a row that exists now
-- was created by a concurrent batch, and the caller compares the count inserted with the count
-- asked for (a shortfall rolls the batch back to be retried, see gate.rs). Inserted in key
-- order, as the lock takes existing rows.
INSERT INTO projection_gate (projection, aggregate_type, aggregate_id, last_version, last_event_id)
SELECT $1, k.aggregate_type, k.aggregate_id, k.last_version, k.last_event_id
FROM unnest($2::text[], $3::uuid[], $4::bigint[], $5::uuid[]) AS k (aggregate_type, aggregate_id, last_version, last_event_id)
ORDER BY 2, 3
ON CONFLICT DO NOTHING
