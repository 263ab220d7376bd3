-- Counts of dead letters per projection instance, class, kind and status, under the same
-- filters as list.sql.
SELECT projection, error_class, error_kind, status, count(*)
FROM dead_letters
WHERE ($1::text[] IS NULL OR projection = ANY($1))
  AND ($2::text IS NULL OR error_kind = $2)
  AND status = ANY($3)
  AND ($4::text IS NULL OR (aggregate_type = $4 AND aggregate_id = $5))
GROUP BY projection, error_class, error_kind, status
ORDER BY projection, error_class DESC, error_kind, status
