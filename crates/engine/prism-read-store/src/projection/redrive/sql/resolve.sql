-- Marks dead letters as applied (or found already applied) by a redrive, or discarded.
UPDATE dead_letters
SET status = $2, resolved_at = now()
WHERE id = ANY($1) AND status = 'open'
