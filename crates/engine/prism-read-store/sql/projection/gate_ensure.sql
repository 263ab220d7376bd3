-- Makes sure a gate row exists for every aggregate of the batch, so that the next statement
-- can lock them all. Waits on a concurrent batch inserting the same row until it commits.
INSERT INTO projection_gate (projection, aggregate_type, aggregate_id, last_version)
SELECT $1, k.aggregate_type, k.aggregate_id, 0
FROM unnest($2::text[], $3::uuid[]) AS k (aggregate_type, aggregate_id)
ORDER BY 2, 3
ON CONFLICT DO NOTHING
