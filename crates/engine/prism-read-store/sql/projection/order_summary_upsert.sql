-- Writes folded order summaries ($1: a JSON array of rows). The version guard keeps a late
-- writer from replacing a newer row.
INSERT INTO {table} AS t
SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)
ON CONFLICT (order_id) DO UPDATE SET
    user_id = EXCLUDED.user_id,
    cart_id = EXCLUDED.cart_id,
    status = EXCLUDED.status,
    lines = EXCLUDED.lines,
    item_count = EXCLUDED.item_count,
    total_cents = EXCLUDED.total_cents,
    payment_method = EXCLUDED.payment_method,
    payment_reference = EXCLUDED.payment_reference,
    payment_failure_reason = EXCLUDED.payment_failure_reason,
    carrier = EXCLUDED.carrier,
    tracking_code = EXCLUDED.tracking_code,
    cancel_reason = EXCLUDED.cancel_reason,
    placed_at = EXCLUDED.placed_at,
    payment_requested_at = EXCLUDED.payment_requested_at,
    paid_at = EXCLUDED.paid_at,
    shipped_at = EXCLUDED.shipped_at,
    cancelled_at = EXCLUDED.cancelled_at,
    updated_at = EXCLUDED.updated_at,
    version = EXCLUDED.version
WHERE t.version < EXCLUDED.version
