-- A product's sales per day over an inclusive date range, oldest day first.
SELECT to_jsonb(t)
FROM product_sales_daily t
WHERE product_id = $1 AND day BETWEEN $2 AND $3
ORDER BY day
