-- The registry of what applications run on this schema, so operators' tools work without any
-- application code: which read models exist (their tables, keys, feeds, cache), which aggregate
-- types publish events (their topics), and the requests operators leave for the application's
-- workers (work that needs a fold: redriving dead letters).

-- One row per read model, written by the application's `migrate` (e.g. `shop-projector
-- migrate`) from its definition. The table SQL lets `prismctl rebuild` create a new generation's
-- table without the application's code.
CREATE TABLE read_models (
    name             text        PRIMARY KEY,
    application      text        NOT NULL,
    -- the aggregate types (topics) that feed it
    sources          text[]      NOT NULL,
    key_columns      text[]      NOT NULL,
    -- columns summed from many aggregates (empty for folded-only read models)
    additive_columns text[]      NOT NULL,
    -- the Redis key kind, when cached
    cache_kind       text,
    -- CREATE TABLE IF NOT EXISTS {table} (...), {table} standing for <name>_g<generation>
    table_sql        text        NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The aggregate types of each application: one event topic and one dead-letter topic each
-- (`prismctl topics ensure`).
CREATE TABLE application_aggregates (
    application    text NOT NULL,
    aggregate_type text NOT NULL,
    PRIMARY KEY (application, aggregate_type)
);

-- Work an operator asks for that needs the application's folds. `prismctl dlq redrive`
-- records a request; a worker of the application that maintains the read model claims it
-- (FOR UPDATE SKIP LOCKED), does it and records the result; prismctl waits for that.
CREATE TABLE operator_requests (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('redrive')),
    -- the projection instance it concerns, e.g. order_summary_g1
    projection   text        NOT NULL,
    arguments    jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'running', 'done', 'failed')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    claimed_by   text,
    claimed_at   timestamptz,
    finished_at  timestamptz,
    result       jsonb
);
CREATE INDEX operator_requests_pending ON operator_requests (projection, id) WHERE status = 'pending';
