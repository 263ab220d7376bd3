-- Locks the batch's existing gate rows in a fixed order (so two batches never deadlock on them)
-- and reads the last applied version and the parked flag of each aggregate. Held until commit:
-- a second worker on the same aggregates (during a rebalance) waits here and then sees what
-- this batch applied. An aggregate without a row is new to the instance; its row is inserted
-- with the batch's writes (gate_insert.sql), which is where a concurrent first batch of it is
-- caught.
SELECT g.aggregate_type, g.aggregate_id, g.last_version, (p.projection IS NOT NULL) AS parked, g.last_event_id
FROM projection_gate g
LEFT JOIN parked_aggregates p
    ON p.projection = g.projection AND p.aggregate_type = g.aggregate_type AND p.aggregate_id = g.aggregate_id
WHERE g.projection = $1
  AND (g.aggregate_type, g.aggregate_id) IN (SELECT * FROM unnest($2::text[], $3::uuid[]))
ORDER BY g.aggregate_type, g.aggregate_id
FOR UPDATE OF g
