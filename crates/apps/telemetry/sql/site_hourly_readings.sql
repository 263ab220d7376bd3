-- site_hourly_readings at one generation: the engine puts <read model>_g<generation> for
-- {table} and adds its bookkeeping columns (prism_version, prism_revision). Columns are the
-- fields of telemetry::read_models::SiteHourlyReadings; reading_count and value_sum_milli are
-- additive (every device of the site adds to them).
CREATE TABLE IF NOT EXISTS {table} (
    site_id         text      NOT NULL,
    metric          text      NOT NULL,
    -- the UTC hour (no time zone: it reads the same in every session)
    hour            timestamp NOT NULL,
    reading_count   bigint    NOT NULL,
    -- the readings' values added up, in thousandths of the metric's unit (integers add up to
    -- the same total in any order; floating-point sums would depend on batching)
    value_sum_milli bigint    NOT NULL,
    PRIMARY KEY (site_id, metric, hour)
);
