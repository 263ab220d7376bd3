-- One aggregate's events from version $3 on, oldest first: all of them for 0 (versions start at
-- 1); for a version a caller folded before, that version's event (to check it is still the one
-- the caller folded) and the ones after it.
SELECT event_id, aggregate_version, event_type, schema_version, occurred_at,
       correlation_id, causation_id, payload
FROM events
WHERE aggregate_type = $1 AND aggregate_id = $2 AND aggregate_version >= $3
ORDER BY aggregate_version
