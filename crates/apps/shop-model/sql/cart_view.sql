-- cart_view at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision).
CREATE TABLE IF NOT EXISTS {table} (
    cart_id        uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL,
    status         text        NOT NULL,
    lines          jsonb       NOT NULL,
    item_count     bigint      NOT NULL,
    total_cents    bigint      NOT NULL,
    order_id       uuid,
    opened_at      timestamptz NOT NULL,
    checked_out_at timestamptz,
    updated_at     timestamptz NOT NULL,
    version        bigint      NOT NULL
)
-- Rows are updated far more often than inserted: room left in every page lets PostgreSQL
-- update a row in place (a heap-only tuple) instead of adding an entry to every index.
WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS {table}_by_user ON {table} (user_id);
