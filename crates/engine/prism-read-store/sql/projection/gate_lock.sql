-- Locks the batch's existing gate rows and reads the last applied version and the parked flag
-- of each aggregate, and where each row is (its `ctid`, for gate_advance.sql). Held until
-- commit: a second worker on the same aggregates (during a rebalance) waits here and then sees
-- what this batch applied. An aggregate without a row is new to the instance; its row is
-- inserted with the batch's writes (gate_insert.sql), which is where a concurrent first batch
-- of it is caught.
--
-- One index lookup per key, in the order of the keys (the caller sorts them, so two batches
-- never deadlock on them), whatever the planner believes about the table: the lookup is a
-- lateral subquery with its own row lock, which PostgreSQL cannot merge into a join. As a join,
-- the plan cached once the statement had run a few times while the table was still small
-- (a new deployment, a new generation) read every gate row of the instance for each batch —
-- index or not — until an ANALYZE replanned it: 20 ms a batch at 150 000 rows instead of 1.
SELECT g.aggregate_type, g.aggregate_id, g.last_version,
       EXISTS (
           SELECT 1 FROM parked_aggregates p
           WHERE p.projection = $1 AND p.aggregate_type = g.aggregate_type AND p.aggregate_id = g.aggregate_id
       ) AS parked,
       g.last_event_id,
       g.ctid::text AS row_id
FROM unnest($2::text[], $3::uuid[]) AS k (aggregate_type, aggregate_id)
CROSS JOIN LATERAL (
    SELECT g.ctid, g.aggregate_type, g.aggregate_id, g.last_version, g.last_event_id
    FROM projection_gate g
    WHERE g.projection = $1 AND g.aggregate_type = k.aggregate_type AND g.aggregate_id = k.aggregate_id
    FOR UPDATE
) AS g
