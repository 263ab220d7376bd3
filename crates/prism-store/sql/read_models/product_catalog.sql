-- product_catalog at one generation: {table} is <projection>_g<generation>.
CREATE TABLE IF NOT EXISTS {table} (
    product_id    uuid        PRIMARY KEY,
    sku           text        NOT NULL,
    name          text        NOT NULL,
    price_cents   bigint      NOT NULL,
    stock         bigint      NOT NULL,
    listed        boolean     NOT NULL,
    delist_reason text,
    listed_at     timestamptz NOT NULL,
    delisted_at   timestamptz,
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
);
-- Listed products by name, with a stable tie-break for cursor pagination.
CREATE INDEX IF NOT EXISTS {table}_listed_by_name ON {table} (name, product_id) WHERE listed;
