-- Dead letters of a partition's offset range not yet copied to the dead-letter topic,
-- in offset order.
SELECT id, source_topic, source_partition, source_offset, message_key, message_value,
       aggregate_type, aggregate_id::text, aggregate_version, event_type, error_class, error_kind, error_message
FROM dead_letters
WHERE projection = $1 AND source_topic = $2 AND source_partition = $3
  AND source_offset BETWEEN $4 AND $5 AND NOT published
ORDER BY source_offset
