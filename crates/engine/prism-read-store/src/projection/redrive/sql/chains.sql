-- The open dead letters to redrive, as chains: one per projection instance and aggregate
-- (aggregate NULL: a message that named none, redriven on its own). $1 projection instances
-- (NULL: all), $2/$3 one aggregate (NULL: all), $4 one dead letter (NULL: all).
SELECT DISTINCT projection, aggregate_type, aggregate_id,
       CASE WHEN aggregate_id IS NULL THEN id END AS lone_id
FROM dead_letters
WHERE status = 'open'
  AND ($1::text[] IS NULL OR projection = ANY($1))
  AND ($2::text IS NULL OR (aggregate_type = $2 AND aggregate_id = $3))
  AND ($4::bigint IS NULL OR id = $4)
ORDER BY projection, aggregate_type, aggregate_id, lone_id
