-- Records the last version applied per aggregate, and the id of the event at that version.
UPDATE projection_gate g
SET last_version = u.last_version, last_event_id = u.last_event_id
FROM unnest($2::text[], $3::uuid[], $4::bigint[], $5::uuid[]) AS u (aggregate_type, aggregate_id, last_version, last_event_id)
WHERE g.projection = $1 AND g.aggregate_type = u.aggregate_type AND g.aggregate_id = u.aggregate_id
