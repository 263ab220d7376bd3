-- product_sales_daily at one generation: {table} is <projection>_g<generation>.
CREATE TABLE IF NOT EXISTS {table} (
    product_id    uuid   NOT NULL,
    day           date   NOT NULL,
    units         bigint NOT NULL,
    revenue_cents bigint NOT NULL,
    order_count   bigint NOT NULL,
    revision      bigint NOT NULL,
    PRIMARY KEY (product_id, day)
);
