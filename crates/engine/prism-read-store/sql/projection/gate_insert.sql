-- Creates the gate rows of aggregates the batch met for the first time, at the state the batch
-- left them in. None of them existed when the batch locked its gate rows; a row that exists now
-- was created by a concurrent batch, and the insert fails on the key (the caller turns that into
-- a retry of the batch, see gate.rs). A plain insert, not `ON CONFLICT DO NOTHING`: a
-- speculative insertion writes each row twice to the WAL (the tuple, then its confirmation),
-- about half as much again for a batch's new rows. The caller sends them in key order, as the
-- lock takes existing rows, so two batches inserting the same aggregates wait on each other in
-- one order.
INSERT INTO projection_gate (projection, aggregate_type, aggregate_id, last_version, last_event_id)
SELECT $1, k.aggregate_type, k.aggregate_id, k.last_version, k.last_event_id
FROM unnest($2::text[], $3::uuid[], $4::bigint[], $5::uuid[]) AS k (aggregate_type, aggregate_id, last_version, last_event_id)
