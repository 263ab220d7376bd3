-- Records dead letters and parked events of a batch. A redelivered message is recorded once;
-- the kinds of the rows actually inserted are returned for counting.
INSERT INTO dead_letters (
    projection, source_topic, source_partition, source_offset, message_key, message_value,
    aggregate_type, aggregate_id, aggregate_version, event_type, error_class, error_kind, error_message
)
SELECT $1, d.*
FROM unnest(
    $2::text[], $3::integer[], $4::bigint[], $5::bytea[], $6::bytea[],
    $7::text[], $8::uuid[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[]
) AS d
ON CONFLICT (projection, source_topic, source_partition, source_offset) DO NOTHING
RETURNING error_kind
