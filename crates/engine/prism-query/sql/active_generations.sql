-- The active generation of every read model that has one (of every application on the schema;
-- the caller keeps its own).
SELECT projection, generation FROM projection_generations WHERE status = 'active'
