-- user_profile at one generation: {table} is <projection>_g<generation>.
CREATE TABLE IF NOT EXISTS {table} (
    user_id              uuid        PRIMARY KEY,
    registered           boolean     NOT NULL,
    email                text,
    display_name         text,
    marketing_opt_in     boolean     NOT NULL,
    registered_at        timestamptz,
    order_count          bigint      NOT NULL,
    paid_order_count     bigint      NOT NULL,
    lifetime_spend_cents bigint      NOT NULL,
    version              bigint      NOT NULL,
    revision             bigint      NOT NULL
);
