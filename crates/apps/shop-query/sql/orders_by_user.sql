-- A user's orders, newest first, one page after the keyset cursor ($2, $3) when given.
-- Matches the index (user_id, placed_at DESC, order_id DESC); order_id breaks ties so a page
-- boundary between two orders placed in the same microsecond loses nothing.
SELECT to_jsonb(t)
FROM order_summary t
WHERE user_id = $1
  AND ($2::timestamptz IS NULL OR (placed_at, order_id) < ($2::timestamptz, $3::uuid))
ORDER BY placed_at DESC, order_id DESC
LIMIT $4
