-- One aggregate's events, oldest first.
SELECT event_id, aggregate_version, event_type, schema_version, occurred_at,
       correlation_id, causation_id, payload
FROM events
WHERE aggregate_type = $1 AND aggregate_id = $2
ORDER BY aggregate_version
