-- product_sales_daily at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision).
CREATE TABLE IF NOT EXISTS {table} (
    product_id    uuid   NOT NULL,
    day           date   NOT NULL,
    units         bigint NOT NULL,
    revenue_cents bigint NOT NULL,
    order_count   bigint NOT NULL,
    PRIMARY KEY (product_id, day)
)
-- Rows are updated far more often than inserted: room left in every page lets PostgreSQL
-- update a row in place (a heap-only tuple) instead of adding an entry to every index.
WITH (fillfactor = 70);
