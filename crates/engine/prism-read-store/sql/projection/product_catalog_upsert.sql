-- Writes folded catalog entries ($1: a JSON array of rows), newer versions only.
INSERT INTO {table} AS t
SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)
ON CONFLICT (product_id) DO UPDATE SET
    sku = EXCLUDED.sku,
    name = EXCLUDED.name,
    price_cents = EXCLUDED.price_cents,
    stock = EXCLUDED.stock,
    listed = EXCLUDED.listed,
    delist_reason = EXCLUDED.delist_reason,
    listed_at = EXCLUDED.listed_at,
    delisted_at = EXCLUDED.delisted_at,
    updated_at = EXCLUDED.updated_at,
    version = EXCLUDED.version
WHERE t.version < EXCLUDED.version
