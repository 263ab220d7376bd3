-- Lifts the parking of aggregates; the redrive re-parks any that still fail.
DELETE FROM parked_aggregates
WHERE projection = $1
  AND (aggregate_type, aggregate_id) IN (SELECT * FROM unnest($2::text[], $3::uuid[]))
