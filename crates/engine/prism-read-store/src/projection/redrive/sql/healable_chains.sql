-- Chains that can heal by themselves (gap policy dead_letter): every open dead letter of the
-- aggregate is a version gap or parked behind one, and the lowest of their versions is the
-- next one the gate expects, i.e. the missing event has arrived (and was parked behind the
-- gap). $1 projection instances, $2/$3 aggregates to look at (NULL: all).
SELECT d.projection, d.aggregate_type, d.aggregate_id
FROM dead_letters d
LEFT JOIN projection_gate g
    ON g.projection = d.projection AND g.aggregate_type = d.aggregate_type AND g.aggregate_id = d.aggregate_id
WHERE d.status = 'open'
  AND d.projection = ANY($1)
  AND d.aggregate_id IS NOT NULL
  AND ($2::text[] IS NULL OR (d.aggregate_type, d.aggregate_id) IN (SELECT * FROM unnest($2::text[], $3::uuid[])))
GROUP BY d.projection, d.aggregate_type, d.aggregate_id, g.last_version
HAVING bool_and(d.error_kind IN ('version_gap', 'parked'))
   AND min(d.aggregate_version) = coalesce(g.last_version, 0) + 1
ORDER BY d.projection, d.aggregate_type, d.aggregate_id
