-- A read replica's state for the query service's probe: whether it is a standby, and how far it
-- has replayed the primary's WAL (compared with the primary's position sampled just before).
SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text
