-- One cart, read through the view (always the active generation).
SELECT to_jsonb(t) FROM cart_view t WHERE cart_id = $1
