-- How many dead letters of an aggregate are still open in a projection instance.
SELECT count(*) FROM dead_letters
WHERE projection = $1 AND status = 'open' AND aggregate_type = $2 AND aggregate_id = $3
