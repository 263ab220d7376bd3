-- The active generation of every projection that has one.
SELECT projection, generation FROM projection_generations WHERE status = 'active'
