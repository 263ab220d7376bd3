-- Unpublished events and the age of the oldest, for the backlog gauges. Every command service
-- samples it every few seconds, and the backlog is largest when the broker is down, so it
-- reads the primary key's index, never the whole table: rows are counted one by one up to $1;
-- past that, the backlog is the span of the rows' ids (every id from the first waiting row to
-- the last), which also counts the rows a lane published ahead of the others and ids taken
-- by appends that rolled back. That span is never less than the rows waiting, and equals them
-- while nothing is published (an outage of the broker). The oldest row is the first by id:
-- ids are handed out as rows are inserted, so it is the first written (give or take the
-- duration of the transaction that wrote it).
SELECT CASE WHEN counted.rows < $1 THEN counted.rows
            ELSE greatest(counted.rows, span.last_id - span.first_id + 1) END AS backlog,
       counted.rows < $1 AS exact,
       coalesce(extract(epoch FROM now() - (SELECT created_at FROM outbox ORDER BY id LIMIT 1)), 0)::float8
           AS oldest_age_seconds
FROM (SELECT count(*) AS rows FROM (SELECT FROM outbox ORDER BY id LIMIT $1) AS waiting) AS counted,
     (SELECT min(id) AS first_id, max(id) AS last_id FROM outbox) AS span
