-- Records the last version applied per aggregate.
UPDATE projection_gate g
SET last_version = u.last_version
FROM unnest($2::text[], $3::uuid[], $4::bigint[]) AS u (aggregate_type, aggregate_id, last_version)
WHERE g.projection = $1 AND g.aggregate_type = u.aggregate_type AND g.aggregate_id = u.aggregate_id
