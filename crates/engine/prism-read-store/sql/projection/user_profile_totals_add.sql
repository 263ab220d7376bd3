-- Adds order totals to user profiles ($1 user ids, $2 orders, $3 paid orders, $4 cents),
-- creating rows for users whose registration has not been applied yet. Atomic per row, so
-- concurrent batches never lose an increment.
INSERT INTO {table} AS t
    (user_id, registered, marketing_opt_in, order_count, paid_order_count, lifetime_spend_cents, version, revision)
SELECT d.user_id, false, false, d.order_count, d.paid_order_count, d.lifetime_spend_cents, 0, 1
FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
    AS d (user_id, order_count, paid_order_count, lifetime_spend_cents)
ON CONFLICT (user_id) DO UPDATE SET
    order_count = t.order_count + EXCLUDED.order_count,
    paid_order_count = t.paid_order_count + EXCLUDED.paid_order_count,
    lifetime_spend_cents = t.lifetime_spend_cents + EXCLUDED.lifetime_spend_cents,
    revision = t.revision + 1

