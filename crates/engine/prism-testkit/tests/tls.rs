//! TLS to every dependency, against real servers with a CA and certificates the test
//! generates (see `prism_testkit::private::TlsStack`): Kafka over SASL_SSL with SCRAM-SHA-512,
//! PostgreSQL over TLS with `sslmode=verify-full`, Redis over TLS (`rediss://`).
//!
//! - A full round trip of the probe application over all three, logging at debug into a
//!   buffer, then every configured secret grepped for in the logs, the configuration's
//!   `Debug` and the errors of the failed attempts.
//! - A wrong password and an untrusted certificate, for each dependency, fail at connect with
//!   an error naming the dependency, the server and what is wrong — and the right settings
//!   connect to the same server, so each failure is the one thing changed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prism_cache::{Cache, CacheError, Entry};
use prism_config::{ConfigSources, PrismConfig};
use prism_events::{Event, EventPosition, WireHeaders};
use prism_kafka::client::{check_brokers, BrokerCheckError};
use prism_postgres::{Database, StoreError};
use prism_testkit::private::{PrivateKafka, PrivatePostgres, PrivateRedis, TestCa, TlsStack, TLS_STACK_USER};
use prism_testkit::probe::{self, Noted};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};

/// Everything every test of this binary logs, at debug (rdkafka's and tokio-postgres's `log`
/// records included).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        // try_init also routes `log` records (rdkafka, tokio-postgres) into tracing.
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Captured(writer.clone()))
            .try_init()
            .expect("the log capture is the first subscriber of this test binary");
        buffer
    })
    .clone()
}

/// A `Write` into the shared log buffer.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A scratch directory for CA files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("prism-tls-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self(path)
    }

    /// Writes `ca`'s certificate as `name`; returns its path as a string.
    fn ca(&self, ca: &TestCa, name: &str) -> String {
        let path = self.0.join(name);
        ca.write_cert(&path).expect("write CA");
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(vars: &[(&str, &str)]) -> PrismConfig {
    let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    PrismConfig::load(&ConfigSources { env, ..Default::default() }).expect("configuration loads")
}

fn secret(kind: &str) -> String {
    format!("{kind}{:016x}", rand::random::<u64>())
}

// ---------------------------------------------------------------------------------------------
// The round trip, and no secret anywhere.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_trip_over_tls_logs_no_secret() {
    let logs = logs();
    let stack = TlsStack::start().await.expect("the TLS stack starts");
    let app = probe::application();
    let config = stack
        .prepare(
            &app,
            &[
                ("PRISM__TOPICS__PREFIX", "tls."),
                ("PRISM__TOPICS__PARTITIONS", "2"),
                ("PRISM__POSTGRES__SCHEMA", "tls_round_trip"),
                ("PRISM__REDIS__KEY_PREFIX", "tls:"),
                // librdkafka's own debug output of the TLS handshake and SASL exchange.
                ("PRISM__KAFKA__PROPERTIES__DEBUG", "security,broker"),
            ],
        )
        .await
        .expect("migrations, read models and topics over TLS");
    let mut seen = vec![format!("{config:?}"), format!("{:?}", stack.env_vars()), format!("{stack:?}")];

    // Kafka: the start-up check, topics, an event produced and consumed, all over SASL_SSL.
    check_brokers(&config.kafka, "tls-test").await.expect("the brokers accept the SASL_SSL connection");
    let plan = prism_kafka::topic_plan(&config, app.aggregate_types());
    let topics = prism_kafka::ensure_topics(&config, &plan).await.expect("topics listed over SASL_SSL");
    assert!(topics.iter().all(|t| matches!(t, prism_kafka::TopicOutcome::Exists { .. })), "{topics:?}");
    let producer =
        prism_kafka::EventProducer::new(&config.kafka, "tls-test", config.topics.max_message_bytes)
            .expect("producer");
    seen.push(format!("{producer:?}"));
    seen.push(format!("{:?}", prism_kafka::base_client_config(&config.kafka, "tls-test")));
    let event = Event::new(
        EventPosition {
            event_id: uuid::Uuid::new_v4(),
            aggregate_id: uuid::Uuid::new_v4(),
            aggregate_version: 1,
            occurred_at: chrono::Utc::now(),
            correlation_id: uuid::Uuid::new_v4(),
            causation_id: uuid::Uuid::new_v4(),
        },
        Noted { n: 42 },
    );
    let topic = probe::PROBE.topic(&config.topics.prefix);
    let version = event.meta.schema_version.to_string();
    producer
        .send(
            &topic,
            event.meta.aggregate_id.to_string().as_bytes(),
            &event.to_json_bytes(),
            &[
                (prism_events::HEADER_EVENT_TYPE, event.event_type().as_bytes()),
                (prism_events::HEADER_SCHEMA_VERSION, version.as_bytes()),
            ],
        )
        .await
        .expect("event produced over SASL_SSL");
    let consumer = prism_testkit::kafka::consumer(&config, "tls.test-consumer", &[]).expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let consumed = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let header = |name: &str| {
                        message.headers().and_then(|h| {
                            h.iter().find(|x| x.key == name).and_then(|x| x.value.map(<[u8]>::to_vec))
                        })
                    };
                    return Some((
                        message.payload().map(<[u8]>::to_vec),
                        header("event_type"),
                        header("schema_version"),
                    ));
                }
                Some(Err(err)) => panic!("consuming over SASL_SSL: {err}"),
                None => {}
            }
        }
        None
    })
    .await
    .expect("consumer thread")
    .expect("the event comes back within 60 s");
    let decoded = prism_events::decode_event(
        app.events(),
        consumed.0.as_deref(),
        WireHeaders { event_type: consumed.1.as_deref(), schema_version: consumed.2.as_deref() },
        &config.events.limits(),
    )
    .expect("the consumed event decodes");
    assert_eq!(decoded, event);

    // PostgreSQL: a pool over TLS (verify-full), migrations, a query; and a single connection.
    let db = Database::connect(&config.postgres, "tls-test").await.expect("pool over TLS");
    seen.push(format!("{db:?}"));
    {
        let mut client = db.client().await.expect("pooled connection");
        let report =
            prism_postgres::migrate(&mut client, &config.postgres.schema).await.expect("migrations over TLS");
        assert!(report.applied.is_empty(), "prepare applied them: {report:?}");
        let row = client
            .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .expect("query over TLS");
        assert!(row.get::<_, bool>(0), "the pooled connection is encrypted");
        let tables: i64 = client
            .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1", &[&config.postgres.schema])
            .await
            .expect("query")
            .get(0);
        assert!(tables > 0, "the migrations created tables");
    }
    let (client, connection) = prism_postgres::connect_one(&config.postgres, "tls-test-single")
        .await
        .expect("single connection over TLS");
    let driver = tokio::spawn(connection);
    let encrypted: bool = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(encrypted, "the single connection is encrypted");
    drop(client);
    let _ = driver.await;

    // Redis: a version-guarded write and a read, over TLS.
    let cache = Cache::connect(&config.redis).await.expect("cache over TLS");
    seen.push(format!("{cache:?}"));
    let key = format!("{}g1:probe:1", config.redis.key_prefix);
    let written = cache
        .put_if_newer(&[Entry { key: &key, revision: 1, version: 1, document: r#"{"n":42}"# }])
        .await
        .expect("write over TLS");
    assert_eq!(written, 1);
    let cached = cache.get(&key).await.expect("read over TLS").expect("the entry is there");
    assert_eq!(cached.document, r#"{"n":42}"#);

    // The refusals, with wrong passwords that must not show either.
    let wrong = [secret("wrongKafka"), secret("wrongPostgres"), secret("wrongRedis")];
    let kafka_err = check_brokers(
        &stack.config(&[("PRISM__KAFKA__SASL_PASSWORD", wrong[0].as_str())]).expect("config").kafka,
        "tls-test",
    )
    .await
    .expect_err("a wrong Kafka password is refused");
    let postgres_err = Database::connect(
        &stack.config(&[("PRISM__POSTGRES__PASSWORD", wrong[1].as_str())]).expect("config").postgres,
        "tls-test",
    )
    .await
    .expect_err("a wrong PostgreSQL password is refused");
    let redis_err = Cache::connect(
        &stack.config(&[("PRISM__REDIS__PASSWORD", wrong[2].as_str())]).expect("config").redis,
    )
    .await
    .expect_err("a wrong Redis password is refused");
    seen.extend([
        format!("{kafka_err} {kafka_err:?}"),
        format!("{postgres_err} {postgres_err:?}"),
        format!("{redis_err} {redis_err:?}"),
    ]);

    // Let librdkafka's background threads finish logging what they have.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logged = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
    if let Ok(path) = std::env::var("PRISM_TLS_TEST_LOG") {
        // For a reader who wants to see what was grepped.
        let _ = std::fs::write(path, &logged);
    }
    for expected in [
        "postgres pool ready",
        "redis connection ready",
        "tokio_postgres",
        "Broker SSL certificate verified",
        "Selected provider SCRAM",
    ] {
        assert!(
            logged.contains(expected),
            "the debug log captured nothing like `{expected}`: the grep below would prove nothing"
        );
    }
    let secrets: Vec<&str> = stack.secrets().into_iter().chain(wrong.iter().map(String::as_str)).collect();
    for secret in secrets {
        for (line_no, line) in logged.lines().enumerate() {
            assert!(!line.contains(secret), "log line {line_no} contains a configured secret: {line}");
        }
        for text in &seen {
            assert!(!text.contains(secret), "a configured secret shows in: {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

/// A TLS-only PostgreSQL with role `prism`, the CA that signed its certificate, and a
/// stranger CA.
struct Postgres {
    server: PrivatePostgres,
    password: String,
    ca: String,
    stranger: String,
    _files: Scratch,
}

async fn postgres(dns_names: &[&str], ip_addresses: &[&str]) -> Postgres {
    let _ = logs();
    let files = Scratch::new();
    let ca = TestCa::new("Prism test CA").expect("ca");
    let password = secret("pg");
    let cert = ca.issue("postgres", dns_names, ip_addresses).expect("certificate");
    let server =
        PrivatePostgres::start_tls(&cert, TLS_STACK_USER, &password).await.expect("TLS PostgreSQL starts");
    let stranger = files.ca(&TestCa::new("Prism test CA").expect("ca"), "stranger.pem");
    Postgres { ca: files.ca(&ca, "ca.pem"), server, password, stranger, _files: files }
}

impl Postgres {
    fn config(&self, sslmode: &str, password: &str, root_cert: &str) -> PrismConfig {
        let url = format!("postgres://prism@127.0.0.1:{}/prism?sslmode={sslmode}", self.server.port());
        load(&[
            ("PRISM__POSTGRES__URL", &url),
            ("PRISM__POSTGRES__PASSWORD", password),
            ("PRISM__POSTGRES__SSL_ROOT_CERT", root_cert),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_names_a_wrong_password() {
    let pg = postgres(&["localhost"], &["127.0.0.1"]).await;
    Database::connect(&pg.config("verify-full", &pg.password, &pg.ca).postgres, "tls-test")
        .await
        .expect("the right password connects");
    let config = pg.config("verify-full", "not-the-password", &pg.ca);
    let expected = format!(
        "PostgreSQL at 127.0.0.1:{}/prism refused the password of user prism (postgres.password)",
        pg.server.port()
    );
    let err = Database::connect(&config.postgres, "tls-test").await.expect_err("a wrong password is refused");
    assert!(matches!(err, StoreError::WrongPassword { .. }), "{err:?}");
    assert_eq!(err.to_string(), expected);
    let err =
        prism_postgres::connect_one(&config.postgres, "tls-test").await.map(|_| ()).expect_err("refused");
    assert_eq!(err.to_string(), expected, "single connections say the same");

    let url = format!("postgres://prism@127.0.0.1:{}/prism?sslmode=verify-full", pg.server.port());
    let config = load(&[("PRISM__POSTGRES__URL", &url), ("PRISM__POSTGRES__SSL_ROOT_CERT", &pg.ca)]);
    let err = Database::connect(&config.postgres, "tls-test").await.expect_err("no password is refused");
    assert!(matches!(err, StoreError::LoginRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("postgres.password is not set"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_names_an_untrusted_certificate() {
    let pg = postgres(&["localhost"], &["127.0.0.1"]).await;
    Database::connect(&pg.config("verify-full", &pg.password, &pg.ca).postgres, "tls-test")
        .await
        .expect("the right CA connects");
    let config = pg.config("verify-full", &pg.password, &pg.stranger);
    for err in [
        Database::connect(&config.postgres, "tls-test").await.map(|_| ()).expect_err("untrusted"),
        prism_postgres::connect_one(&config.postgres, "tls-test").await.map(|_| ()).expect_err("untrusted"),
    ] {
        assert!(matches!(err, StoreError::UntrustedCertificate { .. }), "{err:?}");
        let text = err.to_string();
        let expected = format!(
            "PostgreSQL at 127.0.0.1:{}/prism: the server's certificate is not trusted (checked against postgres.ssl_root_cert {})",
            pg.server.port(),
            pg.stranger
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(text.contains("certificate verify failed"), "{text}");
    }
}

/// `verify-full` checks that the certificate names the host; `verify-ca` only the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_checks_the_host_name() {
    let pg = postgres(&["db.elsewhere.invalid"], &[]).await;
    Database::connect(&pg.config("verify-ca", &pg.password, &pg.ca).postgres, "tls-test")
        .await
        .expect("verify-ca accepts a trusted certificate for another host");
    let err = Database::connect(&pg.config("verify-full", &pg.password, &pg.ca).postgres, "tls-test")
        .await
        .expect_err("verify-full refuses a certificate for another host");
    assert!(matches!(err, StoreError::UntrustedCertificate { .. }), "{err:?}");
    // The URL names 127.0.0.1, which the certificate does not.
    assert!(err.to_string().contains("IP address mismatch"), "{err}");
}

/// The server refuses plaintext: the round trip's connections really were the TLS ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_tls_is_refused_by_the_server() {
    let pg = postgres(&["localhost"], &["127.0.0.1"]).await;
    let url = format!("postgres://prism@127.0.0.1:{}/prism", pg.server.port());
    let config = load(&[("PRISM__POSTGRES__URL", &url), ("PRISM__POSTGRES__PASSWORD", &pg.password)]);
    let err = Database::connect(&config.postgres, "tls-test").await.expect_err("plaintext refused");
    assert!(matches!(err, StoreError::LoginRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("no encryption"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Redis.

struct Redis {
    server: PrivateRedis,
    password: String,
    ca: String,
    stranger: String,
    _files: Scratch,
}

async fn redis() -> Redis {
    let _ = logs();
    let files = Scratch::new();
    let ca = TestCa::new("Prism test CA").expect("ca");
    let password = secret("redis");
    let server = PrivateRedis::start_tls(&ca.issue_localhost("redis").expect("cert"), &password)
        .await
        .expect("TLS Redis starts");
    let stranger = files.ca(&TestCa::new("Prism test CA").expect("ca"), "stranger.pem");
    Redis { ca: files.ca(&ca, "ca.pem"), server, password, stranger, _files: files }
}

impl Redis {
    fn config(&self, password: &str, ca: &str) -> PrismConfig {
        load(&[
            ("PRISM__REDIS__URL", &self.server.url()),
            ("PRISM__REDIS__PASSWORD", password),
            ("PRISM__REDIS__TLS_CA_CERT", ca),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_names_a_wrong_password() {
    let redis = redis().await;
    assert!(redis.server.url().starts_with("rediss://"));
    Cache::connect(&redis.config(&redis.password, &redis.ca).redis)
        .await
        .expect("the right password connects");
    let err = Cache::connect(&redis.config("not-the-password", &redis.ca).redis).await.expect_err("refused");
    assert!(matches!(err, CacheError::LoginRefused { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "Redis at 127.0.0.1:{} refused the login: wrong password (redis.password)",
            redis.server.port()
        )
    );

    let config =
        load(&[("PRISM__REDIS__URL", &redis.server.url()), ("PRISM__REDIS__TLS_CA_CERT", &redis.ca)]);
    let err = Cache::connect(&config.redis).await.expect_err("no password is refused");
    assert!(matches!(err, CacheError::LoginRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("redis.password is not set"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_names_an_untrusted_certificate() {
    let redis = redis().await;
    Cache::connect(&redis.config(&redis.password, &redis.ca).redis).await.expect("the right CA connects");
    let err =
        Cache::connect(&redis.config(&redis.password, &redis.stranger).redis).await.expect_err("untrusted");
    assert!(matches!(err, CacheError::UntrustedCertificate { .. }), "{err:?}");
    let text = err.to_string();
    let expected = format!(
        "Redis at 127.0.0.1:{}: the server's certificate is not trusted (checked against redis.tls_ca_cert {})",
        redis.server.port(),
        redis.stranger
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Kafka: one broker for both cases (a JVM per case would double the test's cost).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_names_a_wrong_password_and_an_untrusted_certificate() {
    let _ = logs();
    let files = Scratch::new();
    let ca = TestCa::new("Prism test CA").expect("ca");
    let password = secret("kafka");
    let broker =
        PrivateKafka::start_sasl_ssl(&ca.issue_localhost("kafka").expect("cert"), TLS_STACK_USER, &password)
            .await
            .expect("broker with a SASL_SSL listener starts");
    let ca_file = files.ca(&ca, "ca.pem");
    let stranger = files.ca(&TestCa::new("Prism test CA").expect("ca"), "stranger.pem");
    let bootstrap = broker.sasl_ssl_bootstrap();
    let config = |password: &str, ca: &str| {
        load(&[
            ("PRISM__KAFKA__BOOTSTRAP_SERVERS", &bootstrap),
            ("PRISM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("PRISM__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("PRISM__KAFKA__SASL_USERNAME", TLS_STACK_USER),
            ("PRISM__KAFKA__SASL_PASSWORD", password),
            ("PRISM__KAFKA__SSL_CA_LOCATION", ca),
        ])
    };
    check_brokers(&config(&password, &ca_file).kafka, "tls-test").await.expect("the right settings connect");

    let started = std::time::Instant::now();
    let err =
        check_brokers(&config("not-the-password", &ca_file).kafka, "tls-test").await.expect_err("refused");
    assert!(matches!(err, BrokerCheckError::Credentials { .. }), "{err:?}");
    let text = err.to_string();
    let expected =
        format!("Kafka at {bootstrap} refused the SASL credentials of user prism (SCRAM-SHA-512; kafka.sasl_password)");
    assert!(text.starts_with(&expected), "{text}");
    assert!(!err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "told at once, not after the request timeout: {:?}",
        started.elapsed()
    );

    let err = check_brokers(&config(&password, &stranger).kafka, "tls-test").await.expect_err("untrusted");
    assert!(matches!(err, BrokerCheckError::UntrustedCertificate { .. }), "{err:?}");
    let text = err.to_string();
    let expected =
        format!("Kafka at {bootstrap}: the broker's certificate is not trusted (checked against kafka.ssl_ca_location {stranger})");
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
}
