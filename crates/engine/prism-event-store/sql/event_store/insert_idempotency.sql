-- Records the first successful response to an Idempotency-Key. A fresh record of the same key
-- (another request that got there first) is left alone and no row is returned; an expired one
-- is replaced, so a key can be reused after its retention.
INSERT INTO command_idempotency (idempotency_key, request_fingerprint, response_status, response_body)
VALUES ($1, $2, $3, $4)
ON CONFLICT (idempotency_key) DO UPDATE
    SET request_fingerprint = EXCLUDED.request_fingerprint,
        response_status     = EXCLUDED.response_status,
        response_body       = EXCLUDED.response_body,
        created_at          = now()
    WHERE command_idempotency.created_at < now() - make_interval(secs => $5)
RETURNING 1
