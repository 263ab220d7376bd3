-- order_summary at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision).
CREATE TABLE IF NOT EXISTS {table} (
    order_id               uuid        PRIMARY KEY,
    user_id                uuid        NOT NULL,
    cart_id                uuid,
    status                 text        NOT NULL,
    lines                  jsonb       NOT NULL,
    item_count             bigint      NOT NULL,
    total_cents            bigint      NOT NULL,
    payment_method         text,
    payment_reference      text,
    payment_failure_reason text,
    carrier                text,
    tracking_code          text,
    cancel_reason          text,
    placed_at              timestamptz NOT NULL,
    payment_requested_at   timestamptz,
    paid_at                timestamptz,
    shipped_at             timestamptz,
    cancelled_at           timestamptz,
    updated_at             timestamptz NOT NULL,
    version                bigint      NOT NULL
)
-- Rows are updated far more often than inserted: room left in every page lets PostgreSQL
-- update a row in place (a heap-only tuple) instead of adding an entry to every index.
WITH (fillfactor = 70);
-- A user's orders, newest first, with a stable tie-break for cursor pagination.
CREATE INDEX IF NOT EXISTS {table}_by_user ON {table} (user_id, placed_at DESC, order_id DESC);
