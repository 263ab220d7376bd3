-- A site's hourly readings, newest hour first, of one metric or all ($2 NULL). Matches the
-- primary key (site_id, metric, hour) for one metric; for all metrics, a site's rows are few.
SELECT to_jsonb(t)
FROM site_hourly_readings t
WHERE site_id = $1
  AND ($2::text IS NULL OR metric = $2)
ORDER BY hour DESC, metric
LIMIT $3
