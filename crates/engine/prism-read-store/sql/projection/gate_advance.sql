-- Records the last version applied per aggregate, and the id of the event at that version.
-- Every row it updates was locked by this transaction (gate_lock.sql), so its current version
-- is the one the subquery finds. The row is found by that index lookup and updated through its
-- `ctid` (a TID scan per key) rather than joined on the key: as a join, the plan cached while
-- the table was small read every gate row of the instance per batch as the table grew (see
-- gate_lock.sql).
UPDATE projection_gate g
SET last_version = u.last_version, last_event_id = u.last_event_id
FROM unnest($2::text[], $3::uuid[], $4::bigint[], $5::uuid[]) AS u (aggregate_type, aggregate_id, last_version, last_event_id)
WHERE g.ctid = (
    SELECT x.ctid FROM projection_gate x
    WHERE x.projection = $1 AND x.aggregate_type = u.aggregate_type AND x.aggregate_id = u.aggregate_id
)
