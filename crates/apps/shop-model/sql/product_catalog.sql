-- product_catalog at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision).
CREATE TABLE IF NOT EXISTS {table} (
    product_id    uuid        PRIMARY KEY,
    sku           text        NOT NULL,
    name          text        NOT NULL,
    price_cents   bigint      NOT NULL,
    stock         bigint      NOT NULL,  -- units on hand
    reserved      bigint      NOT NULL,  -- of those, held by open orders
    available     bigint      NOT NULL,  -- stock - reserved: what a new order can take
    listed        boolean     NOT NULL,
    delist_reason text,
    listed_at     timestamptz NOT NULL,
    delisted_at   timestamptz,
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
)
-- Rows are updated far more often than inserted: room left in every page lets PostgreSQL
-- update a row in place (a heap-only tuple) instead of adding an entry to every index.
WITH (fillfactor = 70);
-- Listed products by name, with a stable tie-break for cursor pagination.
CREATE INDEX IF NOT EXISTS {table}_listed_by_name ON {table} (name, product_id) WHERE listed;
