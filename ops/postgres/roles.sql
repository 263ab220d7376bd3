-- Least-privilege PostgreSQL roles for one Prism schema.
--
--   prism_owner      owns the schema and every table in it: DDL, migrations, read-model
--                    generations. Used by `prismctl migrate` and `prismctl rebuild` only.
--   prism_projector  DML on the read-model tables and the projection bookkeeping (version gate,
--                    dead letters, parked aggregates); reads generations. No DDL: no CREATE on
--                    the schema, owns nothing, so it can neither create nor drop nor truncate.
--   prism_commands   DML on the event store, the outbox and the idempotency records.
--   prism_query      SELECT on the read models (tables and views) and the generations.
--
-- `{schema}` stands for the schema (postgres.schema, default `prism`); substitute it before
-- running, e.g.
--
--   sed 's/{schema}/prism/g' ops/postgres/roles.sql | psql -v ON_ERROR_STOP=1 -U postgres -d prism
--
-- Run it as a superuser (or a role with CREATEROLE that may grant on the schema) before the
-- first `prismctl migrate`, and again after each release that adds write-side tables: it is
-- idempotent, and safe to run from several sessions at once. Roles are created with LOGIN and
-- without a password; set passwords separately (`\password prism_projector`), never here.
--
-- Tables created later by prism_owner (new read-model generations from `prismctl rebuild`,
-- new migrations) get their grants from ALTER DEFAULT PRIVILEGES below: DML for the projector,
-- SELECT for queries. Write-side tables added by a migration need this file run again for
-- prism_commands.

BEGIN;

-- Roles are cluster-wide: serialise concurrent runs (CREATE ROLE and GRANT on the database
-- race otherwise: "tuple concurrently updated").
DO $lock$ BEGIN PERFORM pg_advisory_xact_lock(hashtext('prism.roles')); END $lock$;

DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['prism_owner', 'prism_projector', 'prism_commands', 'prism_query'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- Created by a concurrent run that did not take the lock (an older version
                -- of this file): fine, it exists now.
                NULL;
            END;
        END IF;
    END LOOP;
    -- prismctl migrate runs CREATE SCHEMA IF NOT EXISTS, which checks CREATE on the database
    -- even when the schema exists. Only the owner role gets it.
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO prism_owner', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO prism_projector, prism_commands, prism_query',
                   current_database());
END
$roles$;

-- The schema belongs to prism_owner; the service roles may only look names up in it.
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION prism_owner;
ALTER SCHEMA {schema} OWNER TO prism_owner;
REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
REVOKE CREATE ON SCHEMA {schema} FROM prism_projector, prism_commands, prism_query;
GRANT USAGE ON SCHEMA {schema} TO prism_projector, prism_commands, prism_query;

-- A schema migrated before these roles existed (by a superuser) is handed to prism_owner, so
-- the next `prismctl migrate` or `rebuild` as prism_owner can alter and drop its objects.
-- Identity sequences follow their tables.
DO $adopt$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT c.relname, c.relkind
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '{schema}'
          AND c.relkind IN ('r', 'p', 'v', 'm')
          AND pg_get_userbyid(c.relowner) <> 'prism_owner'
    LOOP
        EXECUTE format('ALTER %s {schema}.%I OWNER TO prism_owner',
                       CASE object.relkind WHEN 'v' THEN 'VIEW'
                                           WHEN 'm' THEN 'MATERIALIZED VIEW'
                                           ELSE 'TABLE' END,
                       object.relname);
    END LOOP;
END
$adopt$;

-- Start from nothing for the service roles, so a rerun also removes grants this file no
-- longer gives.
REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM prism_projector, prism_commands, prism_query;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM prism_projector, prism_commands, prism_query;

-- prism_commands: the write side. Events are append-only (no UPDATE or DELETE); outbox rows
-- are deleted once published, idempotency records once expired.
DO $commands$
BEGIN
    IF to_regclass('{schema}.events') IS NOT NULL THEN
        GRANT SELECT, INSERT ON {schema}.events TO prism_commands;
        GRANT SELECT, INSERT, DELETE ON {schema}.outbox TO prism_commands;
        GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.command_idempotency TO prism_commands;
    END IF;
END
$commands$;

-- prism_projector: every existing table except the write side and the migration ledger
-- (read-model generations <projection>_g<n>, projection_gate, dead_letters,
-- parked_aggregates, operator_requests, which workers claim and answer), plus SELECT on
-- projection_generations, the registry (read_models, application_aggregates) and the views.
DO $projector$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT c.relname, c.relkind
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '{schema}'
          AND c.relkind IN ('r', 'p', 'v', 'm')
          AND c.relname NOT IN ('events', 'outbox', 'command_idempotency', 'schema_migrations')
    LOOP
        IF object.relkind IN ('v', 'm')
           OR object.relname IN ('projection_generations', 'read_models', 'application_aggregates') THEN
            -- Generations are switched by `prismctl rebuild` (prism_owner), never by workers;
            -- the registry is written by `<app>-projector migrate` (prism_owner).
            EXECUTE format('GRANT SELECT ON {schema}.%I TO prism_projector', object.relname);
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.%I TO prism_projector',
                           object.relname);
        END IF;
        -- prism_query: the read models and what it needs to find them; not the bookkeeping.
        IF object.relname NOT IN ('projection_gate', 'parked_aggregates', 'dead_letters', 'operator_requests') THEN
            EXECUTE format('GRANT SELECT ON {schema}.%I TO prism_query', object.relname);
        END IF;
    END LOOP;
END
$projector$;

-- No sequence grants: Prism's generated keys are identity columns, whose sequences need no
-- privilege of the inserting role.

-- Tables prism_owner creates from now on (new read-model generations during a rebuild).
ALTER DEFAULT PRIVILEGES FOR ROLE prism_owner IN SCHEMA {schema}
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO prism_projector;
ALTER DEFAULT PRIVILEGES FOR ROLE prism_owner IN SCHEMA {schema}
    GRANT SELECT ON TABLES TO prism_query;

COMMIT;
