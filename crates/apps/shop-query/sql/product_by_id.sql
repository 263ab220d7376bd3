-- One product, read through the view (always the active generation).
SELECT to_jsonb(t) FROM product_catalog t WHERE product_id = $1
