-- The lanes this session holds, and how many relay instances are registered. Runs on the
-- relay's control connection, so it also proves that connection (and its locks) still lives.
SELECT
    coalesce(array_agg(objid::int4 ORDER BY objid) FILTER (
        WHERE classid = hashtext($1)::oid AND pid = pg_backend_pid()), '{}') AS held,
    count(*) FILTER (WHERE classid = hashtext($2)::oid) AS instances
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid IN (hashtext($1)::oid, hashtext($2)::oid)
