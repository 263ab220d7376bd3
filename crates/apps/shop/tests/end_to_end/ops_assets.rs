//! The operations assets in `ops/` and `docker-compose.yml` checked against the code they
//! describe. There is no Docker engine or Kubernetes cluster on the development machines, so
//! these files are never run here; without these tests they would rot silently (a renamed
//! metric leaves a dashboard panel empty, a misspelt `PRISM__` variable stops a container at
//! start, an alert never fires).
//!
//! - [`compose_services_run_real_binaries_with_valid_config`]: every Prism service of the
//!   compose file runs a binary of the workspace that `ops/Dockerfile` builds, its `PRISM__`
//!   environment loads through the real configuration loader (which rejects unknown keys —
//!   shown by loading a misspelt variable too), its health check and Prometheus target use the
//!   port it listens on, and every mounted file exists.
//! - [`kubernetes_manifests_load_and_fit_the_configuration`]: the same for `ops/k8s/`, with the
//!   ConfigMap's `production.toml` layered in, plus the shutdown and scaling limits.
//! - [`alerts_and_dashboard_are_well_formed`]: each alert has its annotations and a runbook
//!   naming a `prismctl` command; the dashboard parses and every panel has a query.
//! - [`every_metric_in_dashboards_and_alerts_is_exported`]: runs prism-commands and
//!   prism-projector in this process against the real services, drives commands and a few
//!   hostile events through them, scrapes `/metrics` and requires every `prism_*` name the
//!   dashboard and the alerts use; prism-query runs beside them and answers a few reads.
//!   The three share the process-wide recorder (`prism_runtime::telemetry::install`), so the
//!   check is "exported by some process", not by which one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prism_config::{ConfigSources, PrismConfig};
use prism_events::AggregateType;
use prism_testkit::kafka::{produce, producer, publish_events};
use prism_testkit::workload::Workload;
use prism_testkit::TestEnv;
use serde::Deserialize;
use serde_yaml::Value;

// ---- helpers ---------------------------------------------------------------------------

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One YAML document with `<<` merge keys applied (compose's `x-` anchors use them).
fn yaml(relative: &str) -> Value {
    let mut value: Value =
        serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("{relative}: merge keys: {e}"));
    value
}

/// Every document of a multi-document YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            value.apply_merge().expect("merge keys");
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// Every string anywhere in a YAML value.
fn yaml_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Sequence(items) => items.iter().for_each(|v| yaml_strings(v, out)),
        Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            yaml_strings(k, out);
            yaml_strings(v, out);
        }),
        Value::Tagged(tagged) => yaml_strings(&tagged.value, out),
        _ => {}
    }
}

/// Every string anywhere in a JSON value.
fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            json_strings(v, out);
        }),
        _ => {}
    }
}

/// The binaries of the workspace: each crate's `[[bin]]` names, or the package name when it
/// has `src/main.rs` and no `[[bin]]` table. Value: the package.
fn workspace_binaries() -> BTreeMap<String, String> {
    let mut binaries = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("crates")).expect("crates/") {
        let dir = entry.expect("entry").path();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        let manifest: toml::Value = toml::from_str(&text).expect("Cargo.toml parses");
        let package = manifest["package"]["name"].as_str().expect("package.name").to_owned();
        match manifest.get("bin").and_then(|b| b.as_array()) {
            Some(bins) => {
                for bin in bins {
                    binaries.insert(bin["name"].as_str().expect("bin.name").to_owned(), package.clone());
                }
            }
            None if dir.join("src/main.rs").is_file() => {
                binaries.insert(package.clone(), package);
            }
            None => {}
        }
    }
    binaries
}

/// Words of a container command (`["sh", "-c", "a && b"]` gives `sh -c a && b`).
fn command_words(command: &Value) -> Vec<String> {
    let mut strings = Vec::new();
    yaml_strings(command, &mut strings);
    strings
        .iter()
        .flat_map(|s| s.split(|c: char| c.is_whitespace() || ";&|()".contains(c)))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The Prism binaries a command runs: words that are workspace binaries or look like one.
fn prism_binaries_in(words: &[String], known: &BTreeMap<String, String>) -> Vec<String> {
    let mut found: Vec<String> = words
        .iter()
        .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
        .filter(|w| known.contains_key(w) || w.starts_with("prism"))
        .collect();
    found.dedup();
    found
}

/// The listen address a binary's configuration gives it, if it serves HTTP.
fn listen_of<'a>(binary: &str, config: &'a PrismConfig) -> Option<&'a str> {
    match binary {
        "prism-commands" => Some(&config.commands.listen),
        "prism-projector" => Some(&config.projector.listen),
        "prism-query" => Some(&config.query.listen),
        _ => None,
    }
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {address}"))
}

/// Checks the Dockerfile builds and copies `binary`.
fn assert_dockerfile_builds(dockerfile: &str, binary: &str, context: &str) {
    assert!(
        dockerfile.contains(&format!("--bin {binary}")),
        "{context}: ops/Dockerfile does not build `{binary}` (no `--bin {binary}`)"
    );
    assert!(
        dockerfile.contains(&format!("target/release/{binary}"))
            && dockerfile.contains(&format!("/out/{binary}")),
        "{context}: ops/Dockerfile does not copy `{binary}` into the runtime image"
    );
}

/// Loads `env` (and an optional config directory + PRISM_ENV) through the real loader.
fn load(
    env: &[(String, String)],
    config_dir: Option<&Path>,
    environment: Option<&str>,
) -> Result<PrismConfig, String> {
    PrismConfig::load(&ConfigSources {
        config_dir: config_dir.map(Path::to_path_buf),
        environment: environment.map(str::to_owned),
        files: Vec::new(),
        env: env.to_vec(),
    })
    .map_err(|e| e.to_string())
}

/// Proves the loader rejects a misspelt key and a misspelt section given alongside `env`, so
/// a passing load above means the variables were really checked.
fn assert_typos_rejected(
    env: &[(String, String)],
    config_dir: Option<&Path>,
    environment: Option<&str>,
    context: &str,
) {
    for (typo, needle) in
        [("PRISM__PROJECTOR__GROUP_INSTANCE", "group_instance"), ("PRISM__COMANDS__LISTEN", "comands")]
    {
        let mut with_typo = env.to_vec();
        with_typo.push((typo.to_owned(), "0.0.0.0:1".to_owned()));
        match load(&with_typo, config_dir, environment) {
            Ok(_) => panic!(
                "{context}: the loader accepted the misspelt {typo}; the environment check proves nothing"
            ),
            Err(err) => assert!(err.contains(needle), "{context}: the error for {typo} must name it: {err}"),
        }
    }
}

// ---- docker-compose.yml ----------------------------------------------------------------

#[test]
fn compose_services_run_real_binaries_with_valid_config() {
    let compose = yaml("docker-compose.yml");
    let dockerfile = read("ops/Dockerfile");
    let binaries = workspace_binaries();
    for expected in ["prism-commands", "prism-projector", "prismctl"] {
        assert!(binaries.contains_key(expected), "workspace binary {expected} not found: {binaries:?}");
    }
    let services = compose["services"].as_mapping().expect("compose has services");
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for infrastructure in ["kafka", "postgres", "redis", "prometheus", "grafana", "init"] {
        assert!(names.contains(infrastructure), "compose lacks the `{infrastructure}` service");
    }
    // The broker users run is the one the tests run (ops/kafka/pom.xml).
    let kafka_version = read("ops/kafka/pom.xml")
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("ops/kafka/pom.xml sets kafka.version")
        .to_owned();
    assert_eq!(
        str_of(&compose["services"]["kafka"]["image"]),
        format!("apache/kafka:{kafka_version}"),
        "compose runs the broker version the tests run"
    );

    // service name -> (binary, listen port), for the Prometheus targets below.
    let mut served: BTreeMap<String, (String, u16)> = BTreeMap::new();
    let mut instance_ids = Vec::new();
    let mut seen_binaries = BTreeSet::new();
    for (name, service) in services {
        let name = str_of(name);
        let built_here = service["build"]["dockerfile"]
            .as_str()
            .is_some_and(|d| d.trim_start_matches("./") == "ops/Dockerfile");
        let words = command_words(&service["command"]);
        let runs = prism_binaries_in(&words, &binaries);
        if !built_here && runs.is_empty() {
            continue;
        }
        assert!(built_here, "{name}: runs {runs:?} but is not built from ops/Dockerfile");
        assert!(
            !runs.is_empty(),
            "{name}: built from ops/Dockerfile but its command {words:?} runs no Prism binary"
        );
        for binary in &runs {
            assert!(
                binaries.contains_key(binary),
                "{name}: command runs `{binary}`, which is no binary of the workspace ({:?})",
                binaries.keys()
            );
            assert_dockerfile_builds(&dockerfile, binary, &name);
            seen_binaries.insert(binary.clone());
        }
        if runs.iter().any(|b| b == "prismctl") {
            let script = words.join(" ");
            assert!(script.contains("prismctl migrate"), "{name}: init must run `prismctl migrate`");
            assert!(
                script.contains("prismctl topics ensure"),
                "{name}: init must run `prismctl topics ensure`"
            );
        }

        let env: Vec<(String, String)> = service["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: environment must be a mapping"))
            .iter()
            .map(|(k, v)| (str_of(k), str_of(v)))
            .collect();
        assert!(env.iter().any(|(k, _)| k.starts_with("PRISM__")), "{name}: no PRISM__ variables");
        // Mounted Prism config files would be layered too; the compose file configures purely
        // through the environment, which this asserts.
        assert!(
            service.get("volumes").is_none(),
            "{name}: Prism services are configured by PRISM__ variables only"
        );
        let config = load(&env, None, None)
            .unwrap_or_else(|e| panic!("{name}: its PRISM__ environment does not load: {e}"));
        assert_typos_rejected(&env, None, None, &name);
        assert_eq!(config.kafka.bootstrap_servers, "kafka:9092", "{name}: brokers");
        assert_eq!(config.kafka.group_protocol, prism_config::GroupProtocol::Consumer, "{name}: KIP-848 groups");
        assert!(
            config.postgres.url.contains("@postgres:5432/"),
            "{name}: postgres.url {}",
            config.postgres.url
        );
        assert!(config.redis.url.starts_with("redis://redis:6379"), "{name}: redis.url {}", config.redis.url);

        // Long-running services: listen on all interfaces, health check on their own port,
        // start after init succeeded.
        for binary in &runs {
            let Some(listen) = listen_of(binary, &config) else { continue };
            assert!(
                listen.starts_with("0.0.0.0:"),
                "{name}: {binary} listens on {listen}, unreachable from other containers"
            );
            let port = port_of(listen);
            let check = command_words(&service["healthcheck"]["test"]).join(" ");
            assert!(
                check.contains(&format!(":{port}/healthz")),
                "{name}: health check `{check}` must probe /healthz on port {port}"
            );
            assert_eq!(
                service["depends_on"]["init"]["condition"].as_str(),
                Some("service_completed_successfully"),
                "{name}: must wait for init (migrations, topics) to succeed"
            );
            served.insert(name.clone(), (binary.clone(), port));
            if binary == "prism-projector" {
                instance_ids.push(config.projector.group_instance_id.clone());
            }
        }
    }
    for binary in ["prism-commands", "prism-projector", "prism-query", "prismctl"] {
        assert!(seen_binaries.contains(binary), "no compose service runs {binary}");
    }
    assert!(instance_ids.len() >= 2, "two projector workers expected, found {}", instance_ids.len());
    let distinct: BTreeSet<&String> = instance_ids.iter().collect();
    assert!(
        distinct.len() == instance_ids.len() && instance_ids.iter().all(|id| !id.is_empty()),
        "projectors need distinct static member ids: {instance_ids:?}"
    );

    // depends_on: known conditions; a service waited on as healthy has a health check.
    for (name, service) in services {
        let Some(deps) = service["depends_on"].as_mapping() else { continue };
        for (dep, spec) in deps {
            let dep = str_of(dep);
            let condition = spec["condition"].as_str().unwrap_or("service_started");
            assert!(names.contains(&dep), "{}: depends on unknown service {dep}", str_of(name));
            match condition {
                "service_healthy" => assert!(
                    !services[dep.as_str()]["healthcheck"].is_null(),
                    "{}: waits for {dep} to be healthy, but {dep} has no healthcheck",
                    str_of(name)
                ),
                "service_completed_successfully" => {
                    assert_eq!(services[dep.as_str()]["restart"].as_str(), Some("no"), "{dep} is one-shot")
                }
                "service_started" => {}
                other => panic!("{}: unknown depends_on condition {other}", str_of(name)),
            }
        }
    }

    // Bind mounts of every service point at files of the repository.
    let mut mounts: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let spec = str_of(volume);
            let mut parts = spec.split(':');
            let (source, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !source.starts_with('.') && !source.starts_with('/') {
                continue; // a named volume
            }
            let host = repo().join(source.trim_start_matches("./"));
            assert!(host.exists(), "{}: mount source {source} does not exist", str_of(name));
            mounts.insert(target.to_owned(), host);
        }
    }

    // Prometheus: rule files are mounted, targets are services on the ports they listen on.
    // Relative rule files resolve against the config file's directory, in the container as for
    // `promtool check config ops/prometheus/prometheus.yml` (ops/prometheus/check).
    let prometheus = yaml("ops/prometheus/prometheus.yml");
    assert!(mounts.contains_key("/etc/prometheus/prometheus.yml"), "prometheus.yml is not mounted");
    for rule_file in prometheus["rule_files"].as_sequence().expect("rule_files") {
        let rule_file = str_of(rule_file);
        assert!(
            !rule_file.starts_with('/'),
            "rule file {rule_file}: relative to prometheus.yml, so promtool checks it outside Docker"
        );
        let in_container = format!("/etc/prometheus/{rule_file}");
        let source = mounts.get(&in_container).unwrap_or_else(|| {
            panic!("rule file {rule_file} ({in_container}) is not mounted into the prometheus service")
        });
        assert_eq!(
            source,
            &repo().join("ops/prometheus").join(&rule_file),
            "{in_container} must be mounted from ops/prometheus/{rule_file}"
        );
    }
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_sequence().expect("scrape_configs") {
        for target in job["static_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|s| s["targets"].as_sequence().cloned().unwrap_or_default())
        {
            let target = str_of(&target);
            let (host, port) = target.rsplit_once(':').expect("host:port");
            if host == "localhost" {
                continue;
            }
            let (binary, listen) = served
                .get(host)
                .unwrap_or_else(|| panic!("scrape target {target}: no Prism service `{host}`"));
            assert_eq!(
                port.parse::<u16>().ok(),
                Some(*listen),
                "scrape target {target}: {binary} listens on {listen}"
            );
            scraped.insert(host.to_owned());
        }
    }
    let unscraped: Vec<&String> = served.keys().filter(|s| !scraped.contains(*s)).collect();
    assert!(unscraped.is_empty(), "Prism services Prometheus does not scrape: {unscraped:?}");

    // Grafana: provisioning directories and the dashboards directory are mounted and hold files.
    let datasources = mounts.get("/etc/grafana/provisioning/datasources").expect("datasources mounted");
    let providers = mounts.get("/etc/grafana/provisioning/dashboards").expect("dashboard providers mounted");
    for dir in [datasources, providers] {
        let yamls = std::fs::read_dir(dir).expect("provisioning dir").count();
        assert!(yamls > 0, "{} is empty", dir.display());
    }
    let provider = yaml("ops/grafana/provisioning/dashboards/prism.yml");
    let path = str_of(&provider["providers"][0]["options"]["path"]);
    let dashboards = mounts
        .get(&path)
        .unwrap_or_else(|| panic!("Grafana reads dashboards from {path}, which is not mounted"));
    assert!(dashboards.join("prism.json").is_file(), "{} has no prism.json", dashboards.display());
    let datasource = yaml("ops/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["url"].as_str(), Some("http://prometheus:9090"));
}

// ---- ops/k8s -----------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_load_and_fit_the_configuration() {
    let binaries = workspace_binaries();
    let dockerfile = read("ops/Dockerfile");
    let mut documents = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("ops/k8s"))
        .expect("ops/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in &files {
        documents.extend(yaml_documents(file));
    }
    let kind = |doc: &Value| doc["kind"].as_str().unwrap_or("").to_owned();

    // The ConfigMap's production.toml, written where PRISM_CONFIG_DIR would point.
    let config_map = documents
        .iter()
        .find(|d| kind(d) == "ConfigMap" && d["metadata"]["name"].as_str() == Some("prism-config"))
        .expect("ConfigMap prism-config");
    let config_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(config_dir.path().join("production.toml"), str_of(&config_map["data"]["production.toml"]))
        .expect("write production.toml");
    let secret_file = config_dir.path().join("secret");
    std::fs::write(&secret_file, "not-a-real-secret\n").expect("write secret");

    let mut workloads = 0;
    let mut projector_config = None;
    for doc in documents.iter().filter(|d| ["Deployment", "StatefulSet", "Job"].contains(&kind(d).as_str())) {
        let workload = format!("{} {}", kind(doc), str_of(&doc["metadata"]["name"]));
        let pod = &doc["spec"]["template"]["spec"];
        for container in pod["containers"].as_sequence().expect("containers") {
            workloads += 1;
            let words = command_words(&container["command"]);
            let runs = prism_binaries_in(&words, &binaries);
            assert!(!runs.is_empty(), "{workload}: command {words:?} runs no Prism binary");
            for binary in &runs {
                assert!(
                    binaries.contains_key(binary),
                    "{workload}: `{binary}` is no binary of the workspace"
                );
                assert_dockerfile_builds(&dockerfile, binary, &workload);
            }
            let mounts: Vec<String> = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|m| str_of(&m["mountPath"]))
                .collect();
            let mounted = |path: &str| mounts.iter().any(|m| path.starts_with(&format!("{m}/")));

            let mut env = Vec::new();
            let mut environment = None;
            for var in container["env"].as_sequence().into_iter().flatten() {
                let name = str_of(&var["name"]);
                let value = if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    assert_eq!(field, "metadata.name", "{workload}: {name} from an unexpected field");
                    "prism-projector-0".to_owned()
                } else {
                    str_of(&var["value"])
                };
                if name == "PRISM_ENV" {
                    environment = Some(value);
                } else if name.ends_with("_FILE") {
                    assert!(mounted(&value), "{workload}: {name}={value} is not under a mounted volume");
                    env.push((name, secret_file.display().to_string()));
                } else {
                    env.push((name, value));
                }
            }
            let environment = environment.expect("PRISM_ENV selects production.toml");
            let config = load(&env, Some(config_dir.path()), Some(&environment))
                .unwrap_or_else(|e| panic!("{workload}: configuration does not load: {e}"));
            assert_typos_rejected(&env, Some(config_dir.path()), Some(&environment), &workload);
            assert!(mounted("/etc/prism/config/production.toml"), "{workload}: the ConfigMap is not mounted");
            assert_eq!(config.kafka.group_protocol, prism_config::GroupProtocol::Consumer, "{workload}: KIP-848 groups");
            if !config.kafka.ssl_ca_location.is_empty() && runs.iter().any(|b| b != "prism-query") {
                assert!(
                    mounted(&config.kafka.ssl_ca_location),
                    "{workload}: {} not mounted",
                    config.kafka.ssl_ca_location
                );
            }
            for binary in &runs {
                let Some(listen) = listen_of(binary, &config) else { continue };
                let port = port_of(listen);
                let ports: Vec<u16> = container["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["containerPort"].as_u64())
                    .map(|p| p as u16)
                    .collect();
                assert!(ports.contains(&port), "{workload}: listens on {port}, exposes {ports:?}");
                assert_eq!(
                    container["livenessProbe"]["httpGet"]["path"].as_str(),
                    Some("/healthz"),
                    "{workload}"
                );
                assert_eq!(
                    container["readinessProbe"]["httpGet"]["path"].as_str(),
                    Some("/readyz"),
                    "{workload}"
                );
                if binary == "prism-projector" {
                    assert_eq!(
                        kind(doc),
                        "StatefulSet",
                        "projectors need stable pod names for static membership"
                    );
                    assert_eq!(
                        config.projector.group_instance_id, "prism-projector-0",
                        "member id from the pod name"
                    );
                    let grace =
                        pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
                    assert!(
                        grace * 1000 > config.projector.shutdown_deadline_ms + config.projector.commit_interval_ms,
                        "{workload}: grace {grace}s must exceed projector.shutdown_deadline_ms ({} ms) and a commit",
                        config.projector.shutdown_deadline_ms
                    );
                    projector_config = Some(config.clone());
                }
            }
            if runs.iter().any(|b| b == "prismctl") {
                assert!(
                    config.postgres.url.contains("prism_owner@"),
                    "{workload}: migrations run as prism_owner"
                );
            }
        }
    }
    assert!(workloads >= 4, "expected projector, commands, query and migrate workloads, found {workloads}");

    let projector = projector_config.expect("a projector StatefulSet");
    let scaled = documents.iter().find(|d| kind(d) == "ScaledObject").expect("a KEDA ScaledObject");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"].as_str(), Some("StatefulSet"));
    let max = scaled["spec"]["maxReplicaCount"].as_i64().expect("maxReplicaCount");
    assert!(
        max <= i64::from(projector.topics.partitions),
        "maxReplicaCount {max} above topics.partitions {}: extra workers would idle",
        projector.topics.partitions
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("kafka"));
    assert_eq!(
        trigger["metadata"]["consumerGroup"].as_str(),
        Some(prism_projector::group_id(&projector).as_str()),
        "KEDA must watch the projectors' consumer group"
    );
    assert_eq!(
        trigger["metadata"]["bootstrapServers"].as_str(),
        Some(projector.kafka.bootstrap_servers.as_str())
    );
    assert!(trigger["metadata"]["lagThreshold"].as_str().is_some(), "lagThreshold");
}

// ---- alerts and dashboard ----------------------------------------------------------------

#[test]
fn alerts_and_dashboard_are_well_formed() {
    let alerts = yaml("ops/prometheus/alerts.yml");
    let mut names = BTreeSet::new();
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            assert!(rule["expr"].as_str().is_some_and(|e| e.contains("prism_")), "{name}: expr");
            for annotation in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][annotation].as_str().is_some_and(|s| !s.trim().is_empty()),
                    "{name}: {annotation}"
                );
            }
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or("");
            assert!(
                runbook.contains("prismctl ") || runbook.contains("curl "),
                "{name}: the runbook names no command"
            );
            names.insert(name);
        }
    }
    for required in [
        "PrismConsumerLagHigh",
        "PrismDeadLettersGrowing",
        "PrismProjectorNoProgress",
        "PrismRebalanceStorm",
        "PrismOutboxBacklogOld",
    ] {
        assert!(names.contains(required), "alert {required} missing");
    }
    let runbooks = read("ops/prometheus/alerts.yml");
    for command in ["prismctl lag", "prismctl dlq list", "prismctl rebuild"] {
        assert!(runbooks.contains(command), "no alert points to `{command}`");
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("ops/grafana/dashboards/prism.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_i64().expect("panel id")), "duplicate panel id at {title}");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(
            targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("prism_"))),
            "{title}: query"
        );
    }
    assert!(ids.len() >= 12, "the dashboard is thinner than its brief: {} panels", ids.len());
}

// ---- metrics reference -------------------------------------------------------------------

/// `prism_*` names used by the dashboards and alert rules (strings only, not comments).
fn referenced_metric_names() -> BTreeSet<String> {
    let mut strings = Vec::new();
    yaml_strings(&yaml("ops/prometheus/alerts.yml"), &mut strings);
    for entry in std::fs::read_dir(repo().join("ops/grafana/dashboards")).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("dashboard");
            json_strings(&serde_json::from_str(&text).expect("dashboard JSON"), &mut strings);
        }
    }
    let mut names = BTreeSet::new();
    for s in &strings {
        let mut rest = s.as_str();
        while let Some(start) = rest.find("prism_") {
            let preceded_by_word = start > 0 && rest.as_bytes()[start - 1].is_ascii_alphanumeric();
            let tail = &rest[start..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            if !preceded_by_word {
                names.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// The histogram series suffixes and the base name.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Sample names in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_owned())
        .collect()
}

/// Which referenced names the exposition lacks. `_bucket` references need real histogram
/// buckets (a summary would leave `histogram_quantile` panels empty).
fn missing(referenced: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    referenced
        .iter()
        .filter(|name| {
            let present = if name.ends_with("_bucket") {
                exported.contains(*name)
            } else {
                exported.contains(*name) || exported.iter().any(|e| base_name(e) == name.as_str())
            };
            !present
        })
        .cloned()
        .collect()
}

#[test]
fn the_reference_check_can_fail() {
    let exported = exported_names(
        "# TYPE prism_a_seconds summary\nprism_a_seconds{quantile=\"0.5\"} 1\nprism_a_seconds_count 1\nprism_b_total 0\n",
    );
    let referenced: BTreeSet<String> =
        ["prism_a_seconds_bucket", "prism_b_total", "prism_c_total"].map(String::from).into();
    assert_eq!(missing(&referenced, &exported), vec!["prism_a_seconds_bucket", "prism_c_total"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => response.text().await.unwrap_or_default(),
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_in_dashboards_and_alerts_is_exported() {
    prism_testkit::init_logging();
    let referenced = referenced_metric_names();
    for sure in [
        prism_runtime::metric_names::PROJECTOR_EVENTS_APPLIED,
        prism_runtime::metric_names::PROJECTOR_LAG_SECONDS,
        prism_runtime::metric_names::COMMANDS_OUTBOX_OLDEST_AGE,
        prism_runtime::metric_names::QUERY_CACHE_LOOKUPS,
    ] {
        assert!(referenced.contains(sure), "the name extraction missed {sure}: {referenced:?}");
    }

    let env = TestEnv::new().await.expect("test environment");

    // prism-commands (API + relay), prism-projector and prism-query, in this process. They
    // share the process-wide recorder (prism_runtime::telemetry::install), so each /metrics
    // renders all three.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let commands_url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop_commands, commands_stopped) = tokio::sync::oneshot::channel::<()>();
    let commands = tokio::spawn(prism_commands::serve(env.config.clone(), listener, async {
        let _ = commands_stopped.await;
    }));
    let mut projector_config = env.config.clone();
    projector_config.projector.listen = format!("127.0.0.1:{}", free_port());
    let projector_url = format!("http://{}", projector_config.projector.listen);
    let (stop_projector, projector_stopped) = tokio::sync::oneshot::channel::<()>();
    let projector =
        tokio::spawn(prism_projector::run(projector_config, prism_runtime::Health::new(), async {
            let _ = projector_stopped.await;
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let query_url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop_query, query_stopped) = tokio::sync::oneshot::channel::<()>();
    let query = tokio::spawn(prism_query::serve(env.config.clone(), listener, async {
        let _ = query_stopped.await;
    }));

    // Commands through the API (some deliberately invalid), published by the relay.
    let report = prism_bench::load::run(&prism_bench::load::LoadConfig {
        target: commands_url.clone(),
        commands: Some(80),
        duration: Some(Duration::from_secs(60)),
        concurrency: 4,
        seed: 11,
        invalid_share: 0.1,
    })
    .await
    .expect("load run");
    assert_eq!(report.transport_errors, 0, "the command service did not answer");

    // Straight into the topics: duplicates (skipped), a version gap (dead-lettered) and
    // undecodable bytes (dead-lettered).
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(11, 120);
    publish_events(&producer, env.topic_prefix(), &events).await.expect("publish");
    publish_events(&producer, env.topic_prefix(), &events[..10]).await.expect("publish duplicates");
    let others = Workload::generate(12, 400);
    let gapped_order = others
        .iter()
        .filter(|e| e.meta.aggregate_type == AggregateType::Order)
        .map(|e| e.meta.aggregate_id)
        .find(|id| others.iter().filter(|e| e.meta.aggregate_id == *id).count() >= 3)
        .expect("an order with three events");
    let gapped: Vec<_> = others
        .iter()
        .filter(|e| e.meta.aggregate_id == gapped_order && e.meta.aggregate_version != 2)
        .cloned()
        .collect();
    publish_events(&producer, env.topic_prefix(), &gapped).await.expect("publish gap");
    let order_topic = AggregateType::Order.topic(env.topic_prefix());
    produce(&producer, &order_topic, Some(b"poison"), Some(b"{ not json"), &[])
        .await
        .expect("produce poison");

    // A few reads: a list and entity lookups (the cache is consulted first).
    let client = reqwest::Client::new();
    for path in ["/products".to_owned(), format!("/orders/{gapped_order}"), format!("/users/{gapped_order}")]
    {
        let answered = client.get(format!("{query_url}{path}")).send().await;
        assert!(answered.is_ok(), "prism-query did not answer {path}: {answered:?}");
    }

    // Scrape until every referenced name shows up (lag and batch metrics need the projector to
    // have consumed; lag is sampled every 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let missing_names = loop {
        let mut exported = exported_names(&scrape(&client, &format!("{commands_url}/metrics")).await);
        exported.extend(exported_names(&scrape(&client, &format!("{projector_url}/metrics")).await));
        exported.extend(exported_names(&scrape(&client, &format!("{query_url}/metrics")).await));
        let missing_names = missing(&referenced, &exported);
        if missing_names.is_empty() || tokio::time::Instant::now() >= deadline {
            break missing_names;
        }
        if commands.is_finished() {
            panic!("prism-commands stopped early: {:?}", commands.await);
        }
        if projector.is_finished() {
            panic!("prism-projector stopped early: {:?}", projector.await);
        }
        if query.is_finished() {
            panic!("prism-query stopped early: {:?}", query.await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let health = scrape(&client, &format!("{projector_url}/healthz")).await;

    let _ = stop_commands.send(());
    let _ = stop_projector.send(());
    let _ = stop_query.send(());
    let commands_result = tokio::time::timeout(Duration::from_secs(60), commands).await;
    let projector_result = tokio::time::timeout(Duration::from_secs(60), projector).await;
    let query_result = tokio::time::timeout(Duration::from_secs(60), query).await;

    assert!(
        missing_names.is_empty(),
        "metrics used by ops/grafana/dashboards or ops/prometheus/alerts.yml that no process exports \
         after traffic (rename them, or pre-register event-driven series at zero): {missing_names:?}"
    );
    assert_eq!(health.trim(), "ok", "projector /healthz");
    commands_result.expect("prism-commands stops in time").expect("commands task").expect("prism-commands");
    projector_result
        .expect("prism-projector stops in time")
        .expect("projector task")
        .expect("prism-projector");
    query_result.expect("prism-query stops in time").expect("query task").expect("prism-query");
}
