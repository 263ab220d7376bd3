-- Records why a dead letter still could not be applied after a redrive.
UPDATE dead_letters
SET error_class = u.error_class, error_kind = u.error_kind, error_message = u.error_message
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u (id, error_class, error_kind, error_message)
WHERE dead_letters.id = u.id AND dead_letters.status = 'open'
