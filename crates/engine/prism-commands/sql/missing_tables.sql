-- Which of the given tables ($1) do not exist in the schema $2: the command side's readiness
-- check, so a schema that was never migrated shows as "not ready: table `events` is missing"
-- rather than as every command failing.
SELECT t.name
FROM unnest($1::text[]) WITH ORDINALITY AS t(name, ord)
WHERE to_regclass(format('%I.%I', $2::text, t.name)) IS NULL
ORDER BY t.ord
