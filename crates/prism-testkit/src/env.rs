//! [`TestEnv`]: an isolated slice of the shared services for one test.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use prism_config::{ConfigSources, PrismConfig};
use prism_store::Database;
use rand::Rng;

use crate::services::Services;

/// One test's own topics, schema and key prefix, with Prism's migrations applied and its
/// topics created. Dropping it removes the schema and keys; its topics stay (see
/// [`remove_everything`]).
#[derive(Debug)]
pub struct TestEnv {
    /// Random name of this environment, e.g. `t3fa9c0b1d2`.
    pub id: String,
    /// Configuration pointing every component at this environment, loaded through the real
    /// configuration loader from `PRISM__*` variables.
    pub config: PrismConfig,
    /// The variables `config` was loaded from, for starting Prism binaries as child processes.
    pub env_vars: Vec<(String, String)>,
    /// A pool on this environment's schema.
    pub db: Database,
    /// The shared services.
    pub services: Services,
    /// Whether to remove everything on drop (false keeps it for post-mortems:
    /// `PRISM_TEST_KEEP=1`).
    cleanup: bool,
}

impl TestEnv {
    /// An environment with four partitions per event topic.
    pub async fn new() -> anyhow::Result<Self> {
        Self::with_overrides(&[]).await
    }

    /// An environment with extra `PRISM__*` overrides, e.g.
    /// `[("PRISM__TOPICS__PARTITIONS", "4")]`.
    pub async fn with_overrides(overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::on(Services::from_env(), overrides).await
    }

    /// An environment on the given services (e.g. a test's private broker, PostgreSQL or
    /// Redis, see [`crate::private`]), with extra `PRISM__*` overrides.
    pub async fn on(services: Services, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        services.check_all().await?;
        // Creation time first, so leftovers in a long-lived broker are easy to date.
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id = format!("t{created:08x}{:04x}", rand::rng().random::<u16>());
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PRISM__KAFKA__BOOTSTRAP_SERVERS".into(), services.kafka.clone()),
            ("PRISM__TOPICS__PREFIX".into(), format!("{id}.")),
            // Four partitions: enough for two workers to share, light on the broker.
            ("PRISM__TOPICS__PARTITIONS".into(), "4".into()),
            ("PRISM__POSTGRES__URL".into(), services.database_url()),
            ("PRISM__POSTGRES__SCHEMA".into(), id.clone()),
            ("PRISM__POSTGRES__POOL_SIZE".into(), "8".into()),
            ("PRISM__REDIS__URL".into(), services.redis.clone()),
            ("PRISM__REDIS__KEY_PREFIX".into(), format!("{id}:")),
        ]);
        for (key, value) in overrides {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
        let mut env_vars: Vec<(String, String)> = vars.into_iter().collect();
        env_vars.sort();
        let config = PrismConfig::load(&ConfigSources { env: env_vars.clone(), ..Default::default() })
            .context("test configuration")?;

        let db = Database::connect(&config.postgres, &format!("test-{id}")).await?;
        {
            let mut client = db.client().await?;
            prism_store::migrate(&mut client, &config.postgres.schema).await?;
            prism_store::read_models::ensure_active(&mut client).await?;
        }
        let plan = prism_kafka::topic_plan(&config);
        prism_kafka::ensure_topics(&config, &plan).await.context("creating the test topics")?;
        let cleanup = std::env::var("PRISM_TEST_KEEP").map_or(true, |v| v.is_empty() || v == "0");
        Ok(Self { id, config, env_vars, db, services, cleanup })
    }

    /// The active generation of every read model (generation 1 in a fresh environment).
    pub fn active_instances(&self) -> Vec<prism_projections::ProjectionInstance> {
        prism_projections::ProjectionName::ALL
            .into_iter()
            .map(|p| prism_projections::ProjectionInstance::new(p, 1))
            .collect()
    }

    /// A plain connection to this environment's schema (for assertions).
    pub async fn pg(&self) -> anyhow::Result<tokio_postgres::Client> {
        crate::services::connect_pg(&format!(
            "{}?options=-csearch_path%3D{}",
            self.services.database_url(),
            self.config.postgres.schema
        ))
        .await
    }

    /// Waits until the read models equal the oracle's fold of `events`, or `timeout` passes;
    /// returns the last difference on timeout.
    pub async fn wait_for_oracle(
        &self,
        events: &[prism_events::Event],
        cache: crate::oracle::CacheCheck,
        timeout: Duration,
    ) -> anyhow::Result<crate::oracle::CheckSummary> {
        let client = self.pg().await?;
        let expected = crate::oracle::fold(events);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let outcome = crate::oracle::check_expected(
                &expected,
                &client,
                &self.config.redis.url,
                &self.config.redis.key_prefix,
                &self.active_instances(),
                cache,
            )
            .await?;
            match outcome {
                Ok(summary) => return Ok(summary),
                Err(diff) if tokio::time::Instant::now() >= deadline => {
                    let positions = self.group_positions(events).await;
                    anyhow::bail!(
                        "read models still differ from the oracle after {timeout:?}:\n{diff}\n{positions}"
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Where the projector group stands on every event partition, against what was produced:
    /// tells a stalled consumer (committed below the end) from a broker that lost or reused
    /// offsets (fewer messages in the log than events produced) when the oracle check fails.
    async fn group_positions(&self, events: &[prism_events::Event]) -> String {
        use std::fmt::Write as _;
        let group = prism_kafka::admin::projector_group_id(&self.config);
        let offsets = match prism_kafka::admin::group_offsets(
            &self.config.kafka,
            &group,
            &self.event_topics(),
            Duration::from_secs(10),
        )
        .await
        {
            Ok(offsets) => offsets,
            Err(err) => return format!("group {group}: offsets unavailable: {err}"),
        };
        let mut out = format!("group {group} (topic partition: low..high, committed):\n");
        for topic in self.event_topics() {
            let produced =
                events.iter().filter(|e| e.meta.aggregate_type.topic(self.topic_prefix()) == topic).count();
            let in_log: i64 = offsets.iter().filter(|p| p.topic == topic).map(|p| p.high - p.low).sum();
            let _ = writeln!(out, "  {topic}: {produced} events produced, {in_log} messages in the log");
            for p in offsets.iter().filter(|p| p.topic == topic) {
                let committed = p.committed.map_or("none".to_owned(), |c| c.to_string());
                let _ = writeln!(out, "    {}: {}..{}, committed {committed}", p.partition, p.low, p.high);
            }
        }
        out
    }

    /// The event topic of every aggregate type in this environment.
    pub fn event_topics(&self) -> Vec<String> {
        prism_events::AggregateType::ALL.iter().map(|t| t.topic(self.topic_prefix())).collect()
    }

    /// The topic prefix of this environment.
    pub fn topic_prefix(&self) -> &str {
        &self.config.topics.prefix
    }

    /// A consumer group name unique to this environment (Tansu keeps a group's protocol
    /// after it empties, so tests never reuse one).
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.config.topics.prefix)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !self.cleanup {
            eprintln!("PRISM_TEST_KEEP: leaving schema, topics and keys of {} in place", self.id);
            return;
        }
        let config = self.config.clone();
        let db = self.db.clone();
        // Drop cannot await; a short-lived thread with its own runtime does the removal and
        // is joined, so the process cannot exit half-way through it.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(20), remove_everything(&config, &db)).await;
            });
            Some(())
        });
        let _ = handle.join();
    }
}

/// Drops the schema and the Redis keys. Topics stay: with Tansu 0.6 (the development broker)
/// deleting one topic deletes every topic of the broker, and deleting a topic under a fetch
/// panics its storage engine. Neither is Kafka behaviour; Prism itself never deletes topics.
async fn remove_everything(config: &PrismConfig, db: &Database) {
    if let Ok(client) = db.client().await {
        let _ =
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", config.postgres.schema)).await;
    }
    let _ = delete_keys(&config.redis.url, &config.redis.key_prefix).await;
}

/// Deletes every Redis key under `prefix`.
pub async fn delete_keys(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", escape_glob(prefix)))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
pub fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
