-- Every open dead letter of one chain, locked until the redrive commits: a projector batch
-- parking a new event behind this aggregate waits for the gate row lock taken before this.
SELECT {columns}
FROM dead_letters
WHERE projection = $1 AND status = 'open'
  AND ((aggregate_type = $2 AND aggregate_id = $3) OR id = $4)
ORDER BY id
FOR UPDATE
