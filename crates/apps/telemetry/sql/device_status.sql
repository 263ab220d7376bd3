-- device_status at one generation: the engine puts <read model>_g<generation> for {table}
-- and adds its bookkeeping columns (prism_version, prism_revision). Columns are the fields of
-- telemetry::read_models::DeviceStatus.
CREATE TABLE IF NOT EXISTS {table} (
    device_id       uuid        PRIMARY KEY,
    site_id         text        NOT NULL,
    model           text        NOT NULL,
    name            text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('online', 'offline')),
    offline_reason  text,
    went_offline_at timestamptz,
    reading_count   bigint      NOT NULL,
    -- {"<metric>": {"value": <number>, "measured_at": "<RFC 3339>"}, ...}
    last_readings   jsonb       NOT NULL,
    last_reading_at timestamptz,
    registered_at   timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL
);
-- A site's devices, for the site dashboard.
CREATE INDEX IF NOT EXISTS {table}_by_site ON {table} (site_id, device_id);
