-- Whether the catalog knows a product (any listing state).
SELECT EXISTS (SELECT 1 FROM product_catalog WHERE product_id = $1)
