-- product_sales_daily at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision).
CREATE TABLE IF NOT EXISTS {table} (
    product_id    uuid   NOT NULL,
    day           date   NOT NULL,
    units         bigint NOT NULL,
    revenue_cents bigint NOT NULL,
    order_count   bigint NOT NULL,
    PRIMARY KEY (product_id, day)
);
