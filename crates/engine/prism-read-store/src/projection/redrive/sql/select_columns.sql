id, projection, source_topic, source_partition, source_offset, message_key, message_value,
aggregate_type, aggregate_id, aggregate_version, event_type, error_class, error_kind, error_message,
status, dead_lettered_at, resolved_at, published
