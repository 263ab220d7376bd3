-- Adds paid order lines to per-product daily sales ($1 products, $2 days, $3 units,
-- $4 cents, $5 orders). Atomic per row, so concurrent batches never lose an increment.
INSERT INTO {table} AS t (product_id, day, units, revenue_cents, order_count, revision)
SELECT d.product_id, d.day, d.units, d.revenue_cents, d.order_count, 1
FROM unnest($1::uuid[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[])
    AS d (product_id, day, units, revenue_cents, order_count)
ON CONFLICT (product_id, day) DO UPDATE SET
    units = t.units + EXCLUDED.units,
    revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents,
    order_count = t.order_count + EXCLUDED.order_count,
    revision = t.revision + 1
