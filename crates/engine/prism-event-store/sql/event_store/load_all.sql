-- Every stored event in the order it was appended, one page after `$1` (a global position).
SELECT global_position, event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
       schema_version, occurred_at, correlation_id, causation_id, payload
FROM events
WHERE global_position > $1
ORDER BY global_position
LIMIT $2
