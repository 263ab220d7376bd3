-- The stored response to an Idempotency-Key, unless it is older than the retention (an expired
-- record answers nothing even before the purge removes it).
SELECT request_fingerprint, response_status, response_body
FROM command_idempotency
WHERE idempotency_key = $1 AND created_at >= now() - make_interval(secs => $2)
