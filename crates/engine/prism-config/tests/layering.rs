//! Configuration layering, typo detection and secret handling, driven through
//! [`ConfigSources`] without touching the process environment.

use std::path::PathBuf;

use prism_config::{ConfigError, ConfigSources, LogFormat, PrismConfig};

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn load_err(sources: &ConfigSources) -> String {
    match PrismConfig::load(sources) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn defaults_load_with_no_sources() {
    let config = PrismConfig::load(&ConfigSources::default()).expect("defaults load");
    assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(config.postgres.schema, "prism");
    assert_eq!(config.topics.partitions, 12);
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(config.postgres.password.is_none());
}

#[test]
fn later_layers_win_key_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir,
        "staging.toml",
        "[postgres]\npool_size = 4\nschema = \"staging\"\n[topics]\npartitions = 6\n",
    );
    let extra = write(&dir, "extra.toml", "[postgres]\npool_size = 8\n[log]\nformat = \"json\"\n");
    let sources = ConfigSources {
        config_dir: Some(dir.path().to_owned()),
        environment: Some("staging".into()),
        files: vec![extra],
        env: env(&[("PRISM__POSTGRES__POOL_SIZE", "32"), ("UNRELATED", "x"), ("PRISM_ENV", "ignored")]),
    };
    let config = PrismConfig::load(&sources).expect("loads");
    assert_eq!(config.postgres.pool_size, 32, "environment variable beats files");
    assert_eq!(config.log.format, LogFormat::Json, "--config file beats the environment file");
    assert_eq!(config.postgres.schema, "staging", "environment file beats defaults");
    assert_eq!(config.topics.partitions, 6);
    assert_eq!(config.topics.replication_factor, 1, "untouched keys keep their defaults");
}

#[test]
fn passthrough_kafka_properties_come_from_files_and_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        &dir,
        "k.toml",
        "[kafka.properties]\n\"socket.keepalive.enable\" = \"true\"\n\"fetch.wait.max.ms\" = \"100\"\n",
    );
    let password = write(&dir, "key-password", "s3cret\n");
    let config = PrismConfig::load(&ConfigSources {
        files: vec![file],
        // A variable names a property with `_` for `.`, and is kept as text however it reads.
        env: env(&[
            ("PRISM__KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS", "50"),
            ("PRISM__KAFKA__PROPERTIES__QUEUED_MAX_MESSAGES_KBYTES", "4096"),
            ("PRISM__KAFKA__PROPERTIES__CHECK_CRCS", "true"),
            ("PRISM__KAFKA__PROPERTIES__SSL_KEY_PASSWORD_FILE", password.to_str().expect("utf-8")),
        ]),
        ..Default::default()
    })
    .expect("loads");
    let property = |name: &str| config.kafka.properties.get(name).map(String::as_str);
    assert_eq!(property("socket.keepalive.enable"), Some("true"), "a file's property stays");
    assert_eq!(property("fetch.wait.max.ms"), Some("50"), "a variable beats a file");
    assert_eq!(property("queued.max.messages.kbytes"), Some("4096"));
    assert_eq!(property("check.crcs"), Some("true"));
    assert_eq!(property("ssl.key.password"), Some("s3cret"), "from the file a `_FILE` variable names");
    assert_eq!(config.kafka.properties.len(), 5, "{:?}", config.kafka.properties.keys());
}

#[test]
fn a_variable_naming_no_property_is_an_error_naming_it() {
    let err =
        load_err(&ConfigSources { env: env(&[("PRISM__KAFKA__PROPERTIES__", "x")]), ..Default::default() });
    assert!(err.contains("PRISM__KAFKA__PROPERTIES__"), "{err}");
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__KAFKA__PROPERTIES__FETCH__WAIT", "1")]),
        ..Default::default()
    });
    assert!(err.contains("PRISM__KAFKA__PROPERTIES__FETCH__WAIT"), "{err}");
}

#[test]
fn a_typo_in_a_file_is_an_error_naming_the_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(&dir, "typo.toml", "[postgres]\npool_sise = 4\n");
    let err = load_err(&ConfigSources { files: vec![file], ..Default::default() });
    assert!(err.contains("pool_sise"), "{err}");
    assert!(err.contains("typo.toml"), "{err}");
}

#[test]
fn a_typo_in_an_environment_variable_is_an_error_naming_the_variable() {
    let err =
        load_err(&ConfigSources { env: env(&[("PRISM__REDIS__KEY_PREFIKS", "x:")]), ..Default::default() });
    assert!(err.contains("key_prefiks"), "{err}");
    assert!(err.contains("PRISM__REDIS__KEY_PREFIKS"), "{err}");
    let err = load_err(&ConfigSources { env: env(&[("PRISM__POSTGRESS__URL", "x")]), ..Default::default() });
    assert!(err.contains("postgress"), "{err}");
}

#[test]
fn a_wrong_type_is_an_error_naming_the_key() {
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__POSTGRES__POOL_SIZE", "many")]),
        ..Default::default()
    });
    assert!(err.contains("pool_size"), "{err}");
}

#[test]
fn a_missing_environment_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = PrismConfig::load(&ConfigSources {
        config_dir: Some(dir.path().to_owned()),
        environment: Some("prod".into()),
        ..Default::default()
    })
    .expect_err("missing file");
    assert!(matches!(err, ConfigError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("prod.toml"), "{err}");
}

#[test]
fn secrets_come_from_files_and_never_show_in_debug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = write(&dir, "pg-password", "s3cr3t-Pa55\n");
    let sources = ConfigSources {
        env: env(&[
            ("PRISM__POSTGRES__PASSWORD_FILE", secret.to_str().expect("utf-8")),
            ("PRISM__REDIS__PASSWORD", "12345"),
        ]),
        ..Default::default()
    };
    let config = PrismConfig::load(&sources).expect("loads");
    assert_eq!(config.postgres.password.as_ref().map(|s| s.expose()), Some("s3cr3t-Pa55"));
    assert_eq!(config.redis.password.as_ref().map(|s| s.expose()), Some("12345"), "digits stay a string");
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t") && !debug.contains("12345"), "secret leaked: {debug}");
    assert!(debug.contains("Secret(***)"), "{debug}");
}

#[test]
fn a_secret_set_twice_or_unreadable_is_an_error() {
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__POSTGRES__PASSWORD", "a"), ("PRISM__POSTGRES__PASSWORD_FILE", "/nonexistent")]),
        ..Default::default()
    });
    assert!(err.contains("set only one"), "{err}");
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__POSTGRES__PASSWORD_FILE", "/nonexistent/pw")]),
        ..Default::default()
    });
    assert!(err.contains("/nonexistent/pw"), "{err}");
}

#[test]
fn a_password_inside_a_url_is_refused_without_echoing_it() {
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__POSTGRES__URL", "postgres://app:hunter2@db:5432/prism")]),
        ..Default::default()
    });
    assert!(err.contains("postgres.password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn identifiers_spliced_into_sql_are_checked() {
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__POSTGRES__SCHEMA", "prism; DROP TABLE x")]),
        ..Default::default()
    });
    assert!(err.contains("postgres.schema"), "{err}");
}

#[test]
fn query_section_has_defaults_and_checks_page_sizes() {
    let config = PrismConfig::load(&ConfigSources::default()).expect("defaults load");
    assert_eq!(config.query.listen, "127.0.0.1:8081");
    assert_eq!(config.query.min_version_wait_ms, 2000);
    assert!(config.query.default_page_size <= config.query.max_page_size);

    let config = PrismConfig::load(&ConfigSources {
        env: env(&[("PRISM__QUERY__MIN_VERSION_WAIT_MS", "50"), ("PRISM__QUERY__MAX_PAGE_SIZE", "10")]),
        ..Default::default()
    });
    // default_page_size (50) above the new maximum (10) is refused with both keys named.
    let err = config.expect_err("default above maximum").to_string();
    assert!(err.contains("query.default_page_size"), "{err}");

    let err =
        load_err(&ConfigSources { env: env(&[("PRISM__QUERY__MAX_PAGE_SIZ", "10")]), ..Default::default() });
    assert!(err.contains("max_page_siz"), "{err}");
}

#[test]
fn a_message_budget_below_one_batch_is_refused() {
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__PROJECTOR__MAX_MESSAGES_IN_FLIGHT", "500")]),
        ..Default::default()
    });
    assert!(err.contains("projector.max_messages_in_flight (500)"), "{err}");
    assert!(err.contains("projector.batch_max_events (4000)"), "{err}");

    let config = PrismConfig::load(&ConfigSources {
        env: env(&[
            ("PRISM__PROJECTOR__MAX_MESSAGES_IN_FLIGHT", "500"),
            ("PRISM__PROJECTOR__BATCH_MAX_EVENTS", "500"),
        ]),
        ..Default::default()
    })
    .expect("a budget of one full batch");
    assert_eq!(config.projector.max_messages_in_flight, 500);
}

#[test]
fn a_byte_budget_below_one_batch_or_a_zero_byte_bound_is_refused() {
    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__PROJECTOR__MAX_BYTES_IN_FLIGHT", "1048576")]),
        ..Default::default()
    });
    assert!(err.contains("projector.max_bytes_in_flight (1048576)"), "{err}");
    assert!(err.contains("projector.batch_max_bytes (4194304)"), "{err}");

    let err = load_err(&ConfigSources {
        env: env(&[("PRISM__PROJECTOR__MAX_BUFFERED_BYTES_PER_PARTITION", "0")]),
        ..Default::default()
    });
    assert!(err.contains("projector.max_buffered_bytes_per_partition"), "{err}");

    let config = PrismConfig::load(&ConfigSources {
        env: env(&[
            ("PRISM__PROJECTOR__MAX_BYTES_IN_FLIGHT", "1048576"),
            ("PRISM__PROJECTOR__BATCH_MAX_BYTES", "1048576"),
        ]),
        ..Default::default()
    })
    .expect("a byte budget of one full batch");
    assert_eq!(config.projector.max_bytes_in_flight, 1_048_576);
    assert_eq!(config.projector.batch_max_bytes, 1_048_576);
}
