-- One order, read through the view (always the active generation).
SELECT to_jsonb(t) FROM order_summary t WHERE order_id = $1
