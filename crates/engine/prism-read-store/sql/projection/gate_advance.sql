-- Records the last version applied per aggregate, and the id of the event at that version.
-- Every row it updates was locked by this transaction (gate_lock.sql), which returned where the
-- row is: its `ctid`, which cannot change while the lock is held (no other transaction may
-- update the row, and a page's cleanup keeps a live row's line pointer). The update goes
-- straight to it (a TID scan per row) instead of looking each key up in the index again; as a
-- join on the key, the plan cached while the table was small read every gate row of the
-- instance per batch as the table grew (see gate_lock.sql).
UPDATE projection_gate g
SET last_version = u.last_version, last_event_id = u.last_event_id
FROM unnest($1::text[]::tid[], $2::bigint[], $3::uuid[]) AS u (row_id, last_version, last_event_id)
WHERE g.ctid = u.row_id
