-- The primary's WAL write position, sampled at every replica probe: a replica that has replayed
-- up to it holds every commit made before the sample was taken.
SELECT pg_current_wal_lsn()::text
