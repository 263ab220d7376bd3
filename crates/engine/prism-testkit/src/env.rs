//! [`TestEnv`]: an isolated slice of the shared services for one test.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use prism_config::{ConfigSources, GroupProtocol, PrismConfig};
use prism_postgres::Database;
use prism_projections::{Application, ProjectionInstance, ReadModel};
use rand::Rng;

use crate::services::Services;

/// One test's own topics, schema and key prefix for one application, with the engine's
/// migrations applied, the application's read models registered with their tables, and its
/// topics created. Dropping it removes the schema, keys, topics and consumer groups.
#[derive(Debug)]
pub struct TestEnv {
    /// The application under test.
    pub app: Application,
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
    /// An environment for `app` with four partitions per event topic.
    pub async fn new(app: &Application) -> anyhow::Result<Self> {
        Self::with_overrides(app, &[]).await
    }

    /// An environment whose consumer groups speak `protocol` (`kafka.group_protocol`), with
    /// extra `PRISM__*` overrides.
    pub async fn for_protocol(
        app: &Application,
        protocol: GroupProtocol,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all = vec![("PRISM__KAFKA__GROUP_PROTOCOL", protocol.as_librdkafka())];
        all.extend_from_slice(overrides);
        Self::with_overrides(app, &all).await
    }

    /// An environment with extra `PRISM__*` overrides, e.g.
    /// `[("PRISM__TOPICS__PARTITIONS", "4")]`.
    pub async fn with_overrides(app: &Application, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::on(app, Services::from_env(), overrides).await
    }

    /// An environment on the given services (e.g. a test's private broker, PostgreSQL or
    /// Redis, see [`crate::private`]), with extra `PRISM__*` overrides.
    pub async fn on(
        app: &Application,
        services: Services,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
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
            prism_postgres::migrate(&mut client, &config.postgres.schema).await?;
            let registered = prism_read_store::registry::register(
                &mut client,
                app.name(),
                app.aggregate_types(),
                app.read_models(),
            )
            .await?;
            prism_read_store::read_models::ensure_active(&mut client, &registered).await?;
        }
        let plan = prism_kafka::topic_plan(&config, app.aggregate_types());
        prism_kafka::ensure_topics(&config, &plan).await.context("creating the test topics")?;
        let cleanup = std::env::var("PRISM_TEST_KEEP").map_or(true, |v| v.is_empty() || v == "0");
        Ok(Self { app: app.clone(), id, config, env_vars, db, services, cleanup })
    }

    /// The active generation of every read model, as `projection_generations` says now
    /// (generation 1 in a fresh environment; a blue/green rebuild moves it on).
    pub async fn active_instances(&self) -> anyhow::Result<Vec<ProjectionInstance>> {
        let names: Vec<&'static str> = self.app.read_models().iter().map(|m| m.name()).collect();
        let client = self.db.client().await?;
        Ok(prism_read_store::rebuild::active_generations(&**client, &names).await?)
    }

    /// The active instances with their read models, as the oracle checks them.
    pub async fn active_targets(&self) -> anyhow::Result<Vec<(ProjectionInstance, &ReadModel)>> {
        let instances = self.active_instances().await?;
        Ok(instances.into_iter().filter_map(|i| self.app.read_model(i.projection).map(|m| (i, m))).collect())
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

    /// Waits until the read models equal `expected` (the application's oracle fold of the
    /// produced events), or `timeout` passes; returns the last difference on timeout.
    pub async fn wait_for_oracle(
        &self,
        expected: &crate::oracle::Expected,
        cache: crate::oracle::CacheCheck,
        timeout: Duration,
    ) -> anyhow::Result<crate::oracle::CheckSummary> {
        // Kept across looks, and opened again when PostgreSQL closed it (a test that restarts
        // PostgreSQL while it waits): a closed client would fail every look until the deadline.
        let mut client: Option<tokio_postgres::Client> = None;
        let mut last_refusal: Option<String> = None;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let look = async {
                let client = match client.take() {
                    Some(open) if !open.is_closed() => client.insert(open),
                    _ => client.insert(self.pg().await?),
                };
                crate::oracle::check_expected(
                    expected,
                    client,
                    &self.config.redis.url,
                    &self.config.redis.key_prefix,
                    &self.active_targets().await?,
                    cache,
                )
                .await
            };
            // A look that failed (a reply that timed out on a loaded machine) is made again until
            // the deadline; at the deadline its failure is the test's. One that PostgreSQL refused
            // for what the look asks (a table or schema that does not exist) fails the test when
            // the next look, which reads the active generations again, is refused the same way:
            // once may be a look at a generation a switch retired meanwhile, twice is the cause.
            let looked = look.await;
            let refusal =
                looked.as_ref().err().filter(|error| refused_for_good(error)).map(|e| format!("{e:#}"));
            let refused_again = refusal.is_some() && refusal == last_refusal;
            last_refusal = refusal;
            let outcome = match looked {
                Ok(outcome) => outcome,
                Err(error) if refused_again => {
                    return Err(error.context("two oracle looks in a row refused the same way"));
                }
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = format!("{error:#}"), "an oracle look failed; looking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(error) => return Err(error.context(format!("the last oracle look, after {timeout:?}"))),
            };
            match outcome {
                Ok(summary) => return Ok(summary),
                Err(diff) if tokio::time::Instant::now() >= deadline => {
                    let positions = self.group_positions(expected).await;
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
    async fn group_positions(&self, expected: &crate::oracle::Expected) -> String {
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
        for (aggregate, topic) in self.app.aggregate_types().iter().map(|t| (t, t.topic(self.topic_prefix())))
        {
            let produced = expected.events_by_aggregate_type.get(aggregate.as_str()).copied().unwrap_or(0);
            let in_log: i64 = offsets.iter().filter(|p| p.topic == topic).map(|p| p.high - p.low).sum();
            let _ = writeln!(out, "  {topic}: {produced} events folded, {in_log} messages in the log");
            for p in offsets.iter().filter(|p| p.topic == topic) {
                let committed = p.committed.map_or("none".to_owned(), |c| c.to_string());
                let _ = writeln!(out, "    {}: {}..{}, committed {committed}", p.partition, p.low, p.high);
            }
        }
        out
    }

    /// The event topic of every aggregate type of the application in this environment.
    pub fn event_topics(&self) -> Vec<String> {
        self.app.aggregate_types().iter().map(|t| t.topic(self.topic_prefix())).collect()
    }

    /// The topic prefix of this environment.
    pub fn topic_prefix(&self) -> &str {
        &self.config.topics.prefix
    }

    /// A consumer group name unique to this environment (removed with it).
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

/// Whether PostgreSQL refused a statement for what it names rather than for the moment it came
/// in: an undefined table, column or function, a syntax error, a denied privilege (SQLSTATE class
/// 42), or a schema or database that does not exist (3F, 3D). Asking again cannot help.
fn refused_for_good(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| ["42", "3F", "3D"].iter().any(|class| code.code().starts_with(class)))
    })
}

/// Drops the schema, the Redis keys, the topics and the consumer groups of one environment.
async fn remove_everything(config: &PrismConfig, db: &Database) {
    if let Ok(client) = db.client().await {
        let _ =
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", config.postgres.schema)).await;
    }
    let _ = delete_keys(&config.redis.url, &config.redis.key_prefix).await;
    if let Err(err) = delete_topics_and_groups(config).await {
        tracing::debug!(error = %err, "removing a test's topics and groups");
    }
}

/// Deletes every topic and consumer group whose name starts with the environment's prefix,
/// so a long-lived development broker does not fill up with test leftovers.
async fn delete_topics_and_groups(config: &PrismConfig) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let prefix = config.topics.prefix.clone();
    anyhow::ensure!(!prefix.is_empty(), "refusing to delete the topics of an environment without a prefix");
    let kafka = config.kafka.clone();
    let (topics, groups) = tokio::task::spawn_blocking({
        let prefix = prefix.clone();
        move || -> anyhow::Result<(Vec<String>, Vec<String>)> {
            let consumer: BaseConsumer = prism_kafka::base_client_config(&kafka, "test-cleanup").create()?;
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
            let topics = metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect();
            let groups = consumer
                .fetch_group_list(None, Duration::from_secs(10))
                .map(|list| {
                    list.groups()
                        .iter()
                        .map(|g| g.name().to_owned())
                        .filter(|g| g.starts_with(&prefix))
                        .collect()
                })
                .unwrap_or_default();
            Ok((topics, groups))
        }
    })
    .await??;
    let admin: AdminClient<DefaultClientContext> =
        prism_kafka::base_client_config(&config.kafka, "test-cleanup").create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if !groups.is_empty() {
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        admin.delete_groups(&names, &options).await?;
    }
    if !topics.is_empty() {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin.delete_topics(&names, &options).await?;
    }
    Ok(())
}

/// Deletes every Redis key under `prefix`.
pub async fn delete_keys(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut conn = crate::services::redis_connection(url).await?;
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
