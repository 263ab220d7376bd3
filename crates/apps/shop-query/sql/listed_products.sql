-- Listed products by name, one page after the keyset cursor ($1, $2) when given.
-- Matches the partial index (name, product_id) WHERE listed.
SELECT to_jsonb(t)
FROM product_catalog t
WHERE listed
  AND ($1::text IS NULL OR (name, product_id) > ($1::text, $2::uuid))
ORDER BY name, product_id
LIMIT $3
