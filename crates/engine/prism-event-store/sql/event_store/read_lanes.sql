-- The oldest unpublished rows of each given lane, up to $2 per lane, in id order per lane.
-- The event's type and schema version come from the event itself (they become Kafka headers).
SELECT o.id, o.lane, o.topic, o.message_key, o.message_value, e.event_type, e.schema_version,
       e.event_id, e.aggregate_version
FROM unnest($1::int2[]) AS l(lane)
CROSS JOIN LATERAL (
    SELECT id, lane, topic, message_key, message_value, event_id
    FROM outbox
    WHERE outbox.lane = l.lane
    ORDER BY id
    LIMIT $2
) AS o
JOIN events e ON e.event_id = o.event_id
ORDER BY o.lane, o.id
