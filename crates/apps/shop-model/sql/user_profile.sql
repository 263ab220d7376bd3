-- user_profile at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision).
CREATE TABLE IF NOT EXISTS {table} (
    user_id              uuid        PRIMARY KEY,
    registered           boolean     NOT NULL,
    email                text,
    display_name         text,
    marketing_opt_in     boolean     NOT NULL,
    registered_at        timestamptz,
    order_count          bigint      NOT NULL,
    paid_order_count     bigint      NOT NULL,
    lifetime_spend_cents bigint      NOT NULL,
    version              bigint      NOT NULL
)
-- Rows are updated far more often than inserted: room left in every page lets PostgreSQL
-- update a row in place (a heap-only tuple) instead of adding an entry to every index.
WITH (fillfactor = 70);
