-- Parks aggregates behind their first dead letter.
INSERT INTO parked_aggregates (projection, aggregate_type, aggregate_id)
SELECT $1, k.aggregate_type, k.aggregate_id
FROM unnest($2::text[], $3::uuid[]) AS k (aggregate_type, aggregate_id)
ON CONFLICT DO NOTHING
