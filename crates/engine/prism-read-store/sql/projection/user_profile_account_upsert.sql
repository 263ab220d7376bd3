-- Writes the profile fields of folded user profiles ($1: a JSON array of rows). Order
-- totals are left alone: they are written by increments from other partitions at the same
-- time.
INSERT INTO {table} AS t
SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)
ON CONFLICT (user_id) DO UPDATE SET
    registered = EXCLUDED.registered,
    email = EXCLUDED.email,
    display_name = EXCLUDED.display_name,
    marketing_opt_in = EXCLUDED.marketing_opt_in,
    registered_at = EXCLUDED.registered_at,
    version = EXCLUDED.version,
    revision = t.revision + 1
WHERE t.version < EXCLUDED.version

