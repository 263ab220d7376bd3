-- Dead letters matching the optional filters ($1 projection instances, $2 error kind,
-- $3 statuses, $4/$5 aggregate), oldest first, at most $6 rows.
SELECT {columns}
FROM dead_letters
WHERE ($1::text[] IS NULL OR projection = ANY($1))
  AND ($2::text IS NULL OR error_kind = $2)
  AND status = ANY($3)
  AND ($4::text IS NULL OR (aggregate_type = $4 AND aggregate_id = $5))
ORDER BY id
LIMIT $6
