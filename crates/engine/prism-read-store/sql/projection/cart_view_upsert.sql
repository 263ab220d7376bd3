-- Writes folded cart views ($1: a JSON array of rows), newer versions only.
INSERT INTO {table} AS t
SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)
ON CONFLICT (cart_id) DO UPDATE SET
    user_id = EXCLUDED.user_id,
    status = EXCLUDED.status,
    lines = EXCLUDED.lines,
    item_count = EXCLUDED.item_count,
    total_cents = EXCLUDED.total_cents,
    order_id = EXCLUDED.order_id,
    opened_at = EXCLUDED.opened_at,
    checked_out_at = EXCLUDED.checked_out_at,
    updated_at = EXCLUDED.updated_at,
    version = EXCLUDED.version
WHERE t.version < EXCLUDED.version
