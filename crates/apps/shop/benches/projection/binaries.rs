//! The real binaries the benchmark runs as processes: the shop's projector, command and query
//! services, and `prismctl` — optimised builds, next to the benchmark binary in
//! `target/release` (`cargo bench` builds the benchmark in the `bench` profile, which inherits
//! `release`; [`prism_testkit::binaries::path`] builds the binaries in that same profile,
//! `cargo build --release -p shop --bin shop-projector` and so on, before any clock starts).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
pub use prism_testkit::ports::free_port;
use prism_testkit::TestEnv;
use tokio::process::Command;

/// Paths of the binaries.
pub struct Binaries {
    /// `shop-projector`.
    pub projector: PathBuf,
    /// `shop-commands`.
    pub commands: PathBuf,
    /// `shop-query`.
    pub query: PathBuf,
    /// `prismctl`.
    pub prismctl: PathBuf,
}

impl Binaries {
    /// Builds what is missing or out of date (cargo does nothing otherwise) and checks the
    /// result is an optimised build.
    pub async fn build() -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(|| {
            let path = |package: &str, name: &str| prism_testkit::binaries::path(package, name);
            let binaries = Self {
                projector: path("shop", "shop-projector")?,
                commands: path("shop", "shop-commands")?,
                query: path("shop", "shop-query")?,
                prismctl: path("prismctl", "prismctl")?,
            };
            for binary in [&binaries.projector, &binaries.commands, &binaries.query, &binaries.prismctl] {
                let profile = binary.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str()).unwrap_or("");
                if profile != "release" {
                    bail!(
                        "{} is not a release build: run the benchmark with `cargo bench -p shop --bench projection`, \
                         whose binaries are optimised",
                        binary.display()
                    );
                }
            }
            Ok(binaries)
        })
        .await?
    }
}

/// The `PRISM__*` variables of `env` as a Prism process gets them: where everything is, and
/// otherwise the default configuration (the test kit's smaller connection pool is dropped).
pub fn prism_vars(env: &TestEnv) -> Vec<(String, String)> {
    env.env_vars.iter().filter(|(k, _)| k != "PRISM__POSTGRES__POOL_SIZE").cloned().collect()
}

/// A command with exactly `vars` of the `PRISM*` variables (none inherited from the shell).
pub fn command(program: &PathBuf, vars: &[(String, String)]) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("PRISM") {
            command.env_remove(key);
        }
    }
    command.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// The projector with the default configuration, its metrics and health on `listen`.
pub fn projector(binaries: &Binaries, env: &TestEnv, listen: &str) -> Command {
    let mut command = command(&binaries.projector, &prism_vars(env));
    command.env("PRISM__PROJECTOR__LISTEN", listen);
    command.envs(projector_overrides().unwrap_or_default());
    command
}

/// Settings every projector the benchmark starts gets on top of the default configuration,
/// from `PRISM_BENCH_PROJECTOR_VARS` (`PRISM__PROJECTOR__MAX_CONCURRENT_BATCHES=8 …`): the
/// `PRISM*` variables of the shell are not passed on (see [`command`]), so this is how a run
/// tries another setting. The benchmark reads them once before it starts anything, so a
/// malformed one stops it with its name.
pub fn projector_overrides() -> anyhow::Result<Vec<(String, String)>> {
    let Ok(text) = std::env::var("PRISM_BENCH_PROJECTOR_VARS") else { return Ok(Vec::new()) };
    text.split_whitespace()
        .map(|item| match item.split_once('=') {
            Some((key, value)) if key.starts_with("PRISM__") && !key.ends_with("__LISTEN") => {
                Ok((key.to_owned(), value.to_owned()))
            }
            _ => bail!(
                "PRISM_BENCH_PROJECTOR_VARS: `{item}` is not PRISM__<SECTION>__<KEY>=<value> (and the listen address is the benchmark's)"
            ),
        })
        .collect()
}

/// A service process (`shop-commands`, `shop-query`) with its log.
pub struct Service {
    /// The child.
    child: tokio::process::Child,
    /// Its base URL.
    pub base: String,
    /// Its log.
    pub log: PathBuf,
}

impl Service {
    /// Starts `program` with `env`'s variables, listening on a free port (`listen_var`), and
    /// waits until its `/readyz` answers 200.
    pub async fn start(
        program: &PathBuf,
        env: &TestEnv,
        listen_var: &str,
        extra: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let file = std::fs::File::create(&log)?;
        let mut command = command(program, &prism_vars(env));
        command
            .env(listen_var, &listen)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {}", program.display()))?;
        let mut service = Self { child, base: format!("http://{listen}"), log };
        service.wait_ready(Duration::from_secs(60)).await?;
        Ok(service)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        wait_ready(&self.base, timeout, || match self.child.try_wait() {
            Ok(Some(status)) => bail!("exited ({status})\n{}", crate::contender::log_tail(&self.log)),
            _ => Ok(()),
        })
        .await
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// Waits until `base/readyz` answers 200; `check` runs before each attempt.
pub async fn wait_ready(
    base: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        check().with_context(|| format!("the service at {base}"))?;
        if let Ok(answer) = http.get(format!("{base}/readyz")).send().await {
            if answer.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{base}/readyz did not answer 200 within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
