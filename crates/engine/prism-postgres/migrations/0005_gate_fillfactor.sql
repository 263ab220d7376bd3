-- Every batch updates its aggregates' gate rows (last version, last event id: columns no index
-- covers). With room left in each page PostgreSQL updates them in place (heap-only tuples)
-- instead of adding an entry to the wide primary-key index per update; pages filled from now
-- on keep that room.
ALTER TABLE projection_gate SET (fillfactor = 70);
