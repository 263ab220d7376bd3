//! The operations assets in `ops/` and `docker-compose.yml` checked against the code they
//! describe: the reference shop's binaries on the generic engine. There is no Docker engine or
//! Kubernetes cluster on the development machines, so these files are never run here; without
//! these tests they would rot silently (a renamed binary stops a container at start, a renamed
//! metric leaves a dashboard panel empty, a misspelt `PRISM__` variable stops a container at
//! start, an alert never fires).
//!
//! - [`every_binary_an_ops_asset_names_is_a_workspace_binary`]: every binary the compose file,
//!   the Kubernetes manifests, the Dockerfile, `ops/demo`, `ops/dev-stack`, the alert runbooks
//!   and the commands quoted in their comments name is a binary target of the workspace (and
//!   every `cargo -p` a package of it); [`the_binary_check_can_fail`] shows the extraction
//!   catches old and misspelt names.
//! - [`every_configuration_key_an_ops_asset_names_exists`]: every `PRISM__SECTION__KEY` the
//!   assets mention is a key the loader accepts (the shop's `[application]` keys included).
//! - [`compose_services_run_real_binaries_with_valid_config`]: every Prism service of the
//!   compose file runs a binary of the workspace that `ops/Dockerfile` builds, its `PRISM__`
//!   environment loads through the real configuration loader (which rejects unknown keys —
//!   shown by loading a misspelt variable too), the shop's `[application]` settings load, its
//!   health check and Prometheus target use the port it listens on, every mounted file exists,
//!   and the one-shot init runs `shop-projector migrate` before `prismctl topics ensure`.
//! - [`kubernetes_manifests_load_and_fit_the_configuration`]: the same for `ops/k8s/`, with the
//!   ConfigMap's `production.toml` layered in, plus the migrate Job, the shutdown and scaling
//!   limits.
//! - [`alerts_and_dashboard_are_well_formed`]: each alert has its annotations and a runbook
//!   naming a command; the dashboard parses and every panel has a query.
//! - [`every_metric_in_dashboards_and_alerts_is_exported`]: runs the shop's command service,
//!   projector and query service in this process against the real services, drives commands
//!   and a few hostile events through them, scrapes `/metrics` and requires every `prism_*`
//!   name the dashboard and the alerts use. The three share the process-wide recorder
//!   (`prism_runtime::telemetry::install`), so the check is "exported by some process", not by
//!   which one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prism_config::{ConfigSources, PrismConfig};
use prism_testkit::kafka::{produce, producer, publish_events};
use serde::Deserialize;
use serde_yaml::Value;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;

use crate::support;

// ---- the workspace -----------------------------------------------------------------------

/// The repository root (this crate lives in `crates/apps/shop`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().expect("repository root")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// What the workspace builds, as cargo sees it (`cargo metadata`: explicit `[[bin]]` tables and
/// the binaries cargo discovers, such as `src/main.rs`).
#[derive(Debug)]
struct Workspace {
    /// Binary target name → its package.
    binaries: BTreeMap<String, String>,
    /// Every package of the workspace.
    packages: BTreeSet<String>,
    /// The application packages (under `crates/apps/`): binaries named `<app>-…` are theirs.
    applications: BTreeSet<String>,
    /// Names of the compose services and Kubernetes objects, which assets quote too.
    objects: BTreeSet<String>,
}

impl Workspace {
    fn load() -> Self {
        let output = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
            .arg(repo().join("Cargo.toml"))
            .output()
            .expect("running cargo metadata");
        assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
        let apps_dir = repo().join("crates/apps");
        let mut workspace = Self {
            binaries: BTreeMap::new(),
            packages: BTreeSet::new(),
            applications: BTreeSet::new(),
            objects: deployed_objects(),
        };
        for package in metadata["packages"].as_array().expect("packages") {
            let name = package["name"].as_str().expect("package name").to_owned();
            let manifest = Path::new(package["manifest_path"].as_str().expect("manifest_path"));
            if manifest.starts_with(&apps_dir) {
                workspace.applications.insert(name.clone());
            }
            for target in package["targets"].as_array().expect("targets") {
                if target["kind"].as_array().expect("kind").iter().any(|k| k == "bin") {
                    let bin = target["name"].as_str().expect("target name").to_owned();
                    workspace.binaries.insert(bin, name.clone());
                }
            }
            workspace.packages.insert(name);
        }
        workspace
    }

    /// Whether `word` reads as the name of a Prism binary: `prism…` (but not the bare word), or
    /// `<application>-…`, in the characters binary names use. Such a word in a command position
    /// must be a binary.
    fn looks_like_binary(&self, word: &str) -> bool {
        word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && ((word.starts_with("prism") && word.len() > "prism".len())
                || self.applications.iter().any(|app| word.starts_with(&format!("{app}-"))))
    }
}

/// The compose services and the `metadata.name` of every Kubernetes object.
fn deployed_objects() -> BTreeSet<String> {
    let mut names: BTreeSet<String> =
        yaml("docker-compose.yml")["services"].as_mapping().expect("services").keys().map(str_of).collect();
    names.extend(
        kubernetes_documents().iter().filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned)),
    );
    names
}

// ---- reading commands out of the assets ------------------------------------------------

/// One run of a Prism binary in a command line: the binary and the words after it, up to the
/// next command separator.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invocation {
    binary: String,
    args: Vec<String>,
}

impl Invocation {
    /// The first argument (the subcommand), if any.
    fn subcommand(&self) -> Option<&str> {
        self.args.first().map(String::as_str)
    }

    /// Whether this run serves until stopped (no subcommand, or `run`), as opposed to a
    /// one-shot such as `migrate`.
    fn serves(&self) -> bool {
        matches!(self.subcommand(), None | Some("run")) && self.binary != "prismctl"
    }

    /// `<app>-projector migrate`.
    fn is_migrate(&self) -> bool {
        self.binary.ends_with("-projector") && self.subcommand() == Some("migrate")
    }

    /// `prismctl topics ensure`.
    fn is_topics_ensure(&self) -> bool {
        self.binary == "prismctl" && self.args.iter().take(2).eq(["topics", "ensure"].iter())
    }
}

/// The runs of Prism binaries in a shell command line: each command (split at `&&`, `||`,
/// `;`, `|`, parentheses and newlines) whose command word — after `VAR=value` assignments and
/// `env`/`exec`, stripped of quotes and of a directory — looks like a Prism binary.
fn invocations(script: &str, workspace: &Workspace) -> Vec<Invocation> {
    let mut found = Vec::new();
    let separated = script.replace("&&", "\n").replace("||", "\n");
    for command in separated.split(['\n', ';', '|', '(', ')']) {
        let words: Vec<String> = command
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\'' || c == '`').to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        let mut rest = words.iter().skip_while(|w| w.contains('=') || *w == "env" || *w == "exec");
        let Some(first) = rest.next() else { continue };
        let binary = first.rsplit('/').next().unwrap_or(first);
        if workspace.looks_like_binary(binary) {
            found.push(Invocation { binary: binary.to_owned(), args: rest.cloned().collect() });
        }
    }
    found
}

/// The runs of Prism binaries in a container's `command`: the script of `sh -c …`, or the exec
/// form's words as one command.
fn container_invocations(command: &Value, workspace: &Workspace) -> Vec<Invocation> {
    let mut words = Vec::new();
    yaml_strings(command, &mut words);
    match words.as_slice() {
        [shell, flag, script] if ["sh", "bash"].contains(&shell.as_str()) && flag == "-c" => {
            invocations(script, workspace)
        }
        _ => invocations(&words.join(" "), workspace),
    }
}

/// What a file names as binaries and packages outside command positions: `--bin NAME`,
/// `-p NAME` (packages), `$bin/NAME`, `target/<profile>/NAME` and the Dockerfile's
/// `/out/NAME`. `$app`/`${app}` stands for each application of `PRISM_APPS`'s default.
fn named_targets(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let apps: Vec<String> = text
        .split("PRISM_APPS:-")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .map(|list| list.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let expand = |word: &str| -> Vec<String> {
        if word.contains("$app") || word.contains("${app}") {
            apps.iter().map(|app| word.replace("${app}", app).replace("$app", app)).collect()
        } else {
            vec![word.to_owned()]
        }
    };
    let clean = |w: &str| w.trim_matches(|c: char| "\"'`\\,;)(".contains(c)).to_owned();
    // What a package or binary name may be (`mkdir -p "$dir"` is no cargo package).
    let is_name =
        |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let (mut binaries, mut packages) = (BTreeSet::new(), BTreeSet::new());
    let words: Vec<String> = text.split_whitespace().map(clean).collect();
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).cloned().unwrap_or_default();
        match word.as_str() {
            "--bin" => binaries.extend(expand(&next).into_iter().filter(|n| is_name(n))),
            "-p" | "--package" => packages.extend(expand(&next).into_iter().filter(|n| is_name(n))),
            _ => {}
        }
        for marker in ["$bin/", "${bin}/", "target/release/", "target/debug/", "target/$dir/", "/out/"] {
            if let Some(at) = word.find(marker) {
                binaries.extend(expand(&word[at + marker.len()..]).into_iter().filter(|n| is_name(n)));
            }
        }
    }
    (binaries, packages)
}

/// The contents of every `` `code span` `` of a text (comments, Markdown, annotations).
fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

// ---- YAML and JSON -----------------------------------------------------------------------

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

/// Words of a health check's `test` (`["CMD", "curl", …]` gives `CMD curl …`).
fn words_of(value: &Value) -> String {
    let mut strings = Vec::new();
    yaml_strings(value, &mut strings);
    strings.join(" ")
}

/// The Kubernetes manifests of `ops/k8s/`, in file order.
fn kubernetes_documents() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("ops/k8s"))
        .expect("ops/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| yaml_documents(f)).collect()
}

fn kind(doc: &Value) -> String {
    doc["kind"].as_str().unwrap_or("").to_owned()
}

// ---- configuration -----------------------------------------------------------------------

/// The listen address a binary's configuration gives it, if it serves HTTP: by its role, which
/// its name ends with (`prism-relay` serves on the command service's address).
fn listen_of<'a>(binary: &str, config: &'a PrismConfig) -> Option<&'a str> {
    if binary.ends_with("-commands") || binary == "prism-relay" {
        Some(&config.commands.listen)
    } else if binary.ends_with("-projector") {
        Some(&config.projector.listen)
    } else if binary.ends_with("-query") {
        Some(&config.query.listen)
    } else {
        None
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

/// The `[application]` settings: the shop's command service reads them (and must accept
/// them, typos refused); every other binary ignores them, so setting them there is a mistake.
fn assert_application_settings(
    env: &[(String, String)],
    config: &PrismConfig,
    runs: &[Invocation],
    context: &str,
) {
    let sets_application = env.iter().any(|(k, _)| k.starts_with("PRISM__APPLICATION__"));
    if runs.iter().any(|i| i.binary == "shop-commands") {
        shop_commands::settings::Settings::from_config(config)
            .unwrap_or_else(|e| panic!("{context}: the shop's [application] settings do not load: {e}"));
        let mut with_typo = env.to_vec();
        with_typo.push(("PRISM__APPLICATION__CONTEXT".to_owned(), "[\"users\"]".to_owned()));
        let config = load(&with_typo, None, None).expect("[application] is passed through by the loader");
        let err = shop_commands::settings::Settings::from_config(&config)
            .expect_err("a misspelt [application] key is refused by the shop");
        assert!(err.to_string().contains("context"), "{context}: {err}");
    } else {
        assert!(
            !sets_application,
            "{context}: sets PRISM__APPLICATION__* but runs no command service that reads them ({runs:?})"
        );
    }
}

/// A temporary file, for `*_FILE` variables the loader reads.
fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, "not-a-real-secret\n").expect("write secret");
    path
}

// ---- binaries and keys named anywhere ---------------------------------------------------

/// The text files of the operations assets (everything the tests below read, plus the shell
/// scripts and the Kubernetes notes).
fn asset_files() -> Vec<String> {
    let mut files: Vec<String> = [
        "docker-compose.yml",
        "ops/Dockerfile",
        "ops/demo",
        "ops/dev-stack",
        "ops/prometheus/prometheus.yml",
        "ops/prometheus/alerts.yml",
        "ops/prometheus/alerts.test.yml",
        "ops/grafana/dashboards/prism.json",
    ]
    .map(String::from)
    .to_vec();
    for entry in std::fs::read_dir(repo().join("ops/k8s")).expect("ops/k8s") {
        let path = entry.expect("entry").path();
        files.push(format!("ops/k8s/{}", path.file_name().and_then(|n| n.to_str()).expect("name")));
    }
    files.sort();
    files
}

/// Every binary and package `file` names (commands of containers, scripts and code spans,
/// `--bin`/`-p`/paths of builds), by where it was found.
fn names_in(file: &str, workspace: &Workspace) -> (Vec<(String, String)>, BTreeSet<String>) {
    let text = read(file);
    let mut binaries = Vec::new();
    let mut note = |binary: String, place: &str| binaries.push((binary, format!("{file}: {place}")));
    for span in code_spans(&text) {
        for run in invocations(&span, workspace) {
            // Quoted names of services and Kubernetes objects (`shop-migrate`) are no commands.
            if run.args.is_empty() && workspace.objects.contains(&run.binary) {
                continue;
            }
            note(run.binary, &format!("`{span}`"));
        }
    }
    let (named, packages) = named_targets(&text);
    for binary in named {
        note(binary, "a build or path");
    }
    if file == "ops/demo" || file == "ops/dev-stack" {
        // Shell code outside comments: its command words.
        let code: String =
            text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
        for run in invocations(&code, workspace) {
            note(run.binary, "a command");
        }
    }
    if file == "docker-compose.yml" {
        for (name, service) in yaml(file)["services"].as_mapping().expect("services") {
            for run in container_invocations(&service["command"], workspace) {
                note(run.binary, &format!("service {}", str_of(name)));
            }
        }
    }
    if file.starts_with("ops/k8s/") && file.ends_with(".yaml") {
        for doc in yaml_documents(&repo().join(file)) {
            for container in doc["spec"]["template"]["spec"]["containers"].as_sequence().into_iter().flatten()
            {
                for run in container_invocations(&container["command"], workspace) {
                    note(run.binary, &format!("{} {}", kind(&doc), str_of(&doc["metadata"]["name"])));
                }
            }
        }
    }
    if file == "ops/prometheus/alerts.yml" {
        for group in yaml(file)["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
                for run in invocations(runbook, workspace) {
                    note(run.binary, &format!("the runbook of {}", rule["alert"].as_str().unwrap_or("?")));
                }
            }
        }
    }
    (binaries, packages)
}

#[test]
fn every_binary_an_ops_asset_names_is_a_workspace_binary() {
    let workspace = Workspace::load();
    for expected in ["shop-commands", "shop-projector", "shop-query", "shop-bench", "prismctl", "prism-relay"]
    {
        assert!(
            workspace.binaries.contains_key(expected),
            "workspace binary {expected} not found: {workspace:?}"
        );
    }
    let mut wrong = Vec::new();
    let mut found_per_file = BTreeMap::new();
    for file in asset_files() {
        let (binaries, packages) = names_in(&file, &workspace);
        found_per_file.insert(file.clone(), binaries.iter().map(|(b, _)| b.clone()).collect::<BTreeSet<_>>());
        for (binary, place) in binaries {
            if !workspace.binaries.contains_key(&binary) {
                wrong.push(format!("{place} names `{binary}`, which is no binary of the workspace"));
            }
        }
        for package in packages {
            if !workspace.packages.contains(&package) {
                wrong.push(format!(
                    "{file}: builds package `{package}`, which is no package of the workspace"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "binaries the workspace has: {:?}\n{}",
        workspace.binaries.keys().collect::<Vec<_>>(),
        wrong.join("\n")
    );
    // The extraction found what each asset runs (so an empty result is not a pass).
    for (file, at_least) in [
        ("ops/Dockerfile", &["shop-commands", "shop-projector", "shop-query", "shop-bench", "prismctl"][..]),
        ("ops/demo", &["shop-commands", "shop-projector", "shop-query", "shop-bench", "prismctl"][..]),
        ("ops/dev-stack", &["shop-projector", "prismctl"][..]),
        ("docker-compose.yml", &["shop-commands", "shop-projector", "shop-query", "prismctl"][..]),
        ("ops/k8s/migrate-job.yaml", &["shop-projector", "prismctl"][..]),
        ("ops/prometheus/alerts.yml", &["prismctl"][..]),
    ] {
        let found = &found_per_file[file];
        for binary in at_least {
            assert!(found.contains(*binary), "{file}: `{binary}` not found among {found:?}");
        }
    }
}

#[test]
fn the_binary_check_can_fail() {
    let workspace = Workspace {
        binaries: [("shop-projector", "shop"), ("prismctl", "prismctl")]
            .map(|(b, p)| (b.to_owned(), p.to_owned()))
            .into(),
        packages: ["shop", "prismctl", "prism-commands"].map(String::from).into(),
        applications: ["shop"].map(String::from).into(),
        objects: ["shop-migrate"].map(String::from).into(),
    };
    let runs = invocations(
        "sh -c \"shop-projecter migrate && PRISM__X__Y=1 prismctl topics ensure\"; /usr/local/bin/prism-query | grep x",
        &workspace,
    );
    let binaries: Vec<&str> = runs.iter().map(|r| r.binary.as_str()).collect();
    // `sh -c "…"` as one shell line: its command word is `sh`; the quoted script's commands
    // are found once the container form splits it (container_invocations).
    assert_eq!(binaries, vec!["prismctl", "prism-query"]);
    let script = Value::Sequence(vec![
        Value::String("sh".into()),
        Value::String("-c".into()),
        Value::String("shop-projecter migrate && prismctl topics ensure".into()),
    ]);
    let runs = container_invocations(&script, &workspace);
    assert_eq!(
        runs,
        vec![
            Invocation { binary: "shop-projecter".into(), args: vec!["migrate".into()] },
            Invocation { binary: "prismctl".into(), args: vec!["topics".into(), "ensure".into()] },
        ]
    );
    assert!(runs[1].is_topics_ensure() && !runs[0].is_migrate() && !runs[0].serves());
    let (binaries, packages) = named_targets(
        "apps=${PRISM_APPS:-shop telemetry}\ncargo build -p prism-bench --bin prism-bench -p \"$app\" --bin \"$app-projector\"\n\"$bin/prism-commands\" &\ncp target/release/shop-query /out/",
    );
    assert_eq!(
        binaries,
        ["prism-bench", "prism-commands", "shop-projector", "shop-query", "telemetry-projector"]
            .map(String::from)
            .into()
    );
    assert_eq!(packages, ["prism-bench", "shop", "telemetry"].map(String::from).into());
    let unknown: Vec<&String> = binaries.iter().filter(|b| !workspace.binaries.contains_key(*b)).collect();
    assert_eq!(unknown, vec!["prism-bench", "prism-commands", "shop-query", "telemetry-projector"]);
    assert_eq!(
        code_spans("run `shop-projecter migrate` then `prismctl lag`"),
        vec!["shop-projecter migrate", "prismctl lag"]
    );
    assert!(
        !workspace.looks_like_binary("prism.projector") && !workspace.looks_like_binary("PRISM__LOG__FILTER")
    );
    assert!(!workspace.looks_like_binary("prism") && workspace.looks_like_binary("prismctrl"));
    let quoted = invocations("shop-migrate", &workspace);
    assert!(
        quoted.len() == 1 && workspace.objects.contains(&quoted[0].binary),
        "a quoted object name is told apart"
    );
}

/// Every `PRISM__SECTION__KEY` name in `text`.
fn prism_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("PRISM__") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if name["PRISM__".len()..].contains("__") {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Whether the loader knows the key of `variable` (its value may still be of the wrong type,
/// which is not the question here). `[application]` keys are asked of the shop.
fn key_is_known(variable: &str, secret: &Path) -> Result<(), String> {
    let value = if variable.ends_with("_FILE") { secret.display().to_string() } else { "1".to_owned() };
    let env = vec![(variable.to_owned(), value)];
    let unknown = |err: &str| err.contains("unknown field");
    let config = match load(&env, None, None) {
        Ok(config) => config,
        Err(err) if unknown(&err) => return Err(err),
        Err(_) => return Ok(()),
    };
    if variable.starts_with("PRISM__APPLICATION__") {
        if let Err(err) = shop_commands::settings::Settings::from_config(&config) {
            if unknown(&err.to_string()) {
                return Err(err.to_string());
            }
        }
    }
    Ok(())
}

#[test]
fn every_configuration_key_an_ops_asset_names_exists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = secret_file(dir.path());
    let mut wrong = Vec::new();
    let mut checked = BTreeSet::new();
    for file in asset_files() {
        for variable in prism_variables(&read(&file)) {
            if let Err(err) = key_is_known(&variable, &secret) {
                wrong.push(format!("{file}: {variable}: {err}"));
            }
            checked.insert(variable);
        }
    }
    assert!(wrong.is_empty(), "unknown configuration keys:\n{}", wrong.join("\n"));
    for sure in [
        "PRISM__PROJECTOR__GROUP_INSTANCE_ID",
        "PRISM__APPLICATION__CONTEXTS",
        "PRISM__POSTGRES__PASSWORD_FILE",
    ] {
        assert!(checked.contains(sure), "the extraction missed {sure}: {checked:?}");
    }
    // The check can fail: a misspelt key, section, secret file and application key.
    for typo in [
        "PRISM__PROJECTOR__GROUP_INSTANCE",
        "PRISM__COMANDS__LISTEN",
        "PRISM__POSTGRES__PASWORD_FILE",
        "PRISM__APPLICATION__CONTEXT",
    ] {
        assert!(key_is_known(typo, &secret).is_err(), "{typo} passed as a known key");
    }
}

// ---- docker-compose.yml ----------------------------------------------------------------

#[test]
fn compose_services_run_real_binaries_with_valid_config() {
    let workspace = Workspace::load();
    let compose = yaml("docker-compose.yml");
    let dockerfile = read("ops/Dockerfile");
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
    let mut migrated = BTreeSet::new();
    let mut workers = BTreeSet::new();
    for (name, service) in services {
        let name = str_of(name);
        let built_here = service["build"]["dockerfile"]
            .as_str()
            .is_some_and(|d| d.trim_start_matches("./") == "ops/Dockerfile");
        let runs = container_invocations(&service["command"], &workspace);
        if !built_here && runs.is_empty() {
            continue;
        }
        assert!(built_here, "{name}: runs {runs:?} but is not built from ops/Dockerfile");
        assert!(!runs.is_empty(), "{name}: built from ops/Dockerfile but its command runs no Prism binary");
        for run in &runs {
            assert!(
                workspace.binaries.contains_key(&run.binary),
                "{name}: command runs `{}`, which is no binary of the workspace ({:?})",
                run.binary,
                workspace.binaries.keys()
            );
            assert_dockerfile_builds(&dockerfile, &run.binary, &name);
            seen_binaries.insert(run.binary.clone());
        }
        // The one-shot setup: the application's migrate registers its aggregate types, which
        // `prismctl topics ensure` reads, so migrate comes first.
        if runs.iter().any(|r| r.binary == "prismctl") {
            let ensure = runs.iter().position(Invocation::is_topics_ensure);
            let migrate = runs.iter().position(Invocation::is_migrate);
            assert!(ensure.is_some(), "{name}: init must run `prismctl topics ensure`: {runs:?}");
            assert!(
                migrate.is_some(),
                "{name}: init must run the application's `<app>-projector migrate`: {runs:?}"
            );
            assert!(migrate < ensure, "{name}: `migrate` must run before `prismctl topics ensure`: {runs:?}");
            migrated.extend(runs.iter().filter(|r| r.is_migrate()).map(|r| r.binary.clone()));
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
        assert_application_settings(&env, &config, &runs, &name);
        assert_eq!(config.kafka.bootstrap_servers, "kafka:9092", "{name}: brokers");
        assert_eq!(
            config.kafka.group_protocol,
            prism_config::GroupProtocol::Consumer,
            "{name}: KIP-848 groups"
        );
        assert!(
            config.postgres.url.contains("@postgres:5432/"),
            "{name}: postgres.url {}",
            config.postgres.url
        );
        assert!(config.redis.url.starts_with("redis://redis:6379"), "{name}: redis.url {}", config.redis.url);

        // Long-running services: listen on all interfaces, health check on their own port,
        // start after init succeeded.
        for run in runs.iter().filter(|r| r.serves()) {
            let binary = &run.binary;
            let Some(listen) = listen_of(binary, &config) else { continue };
            assert!(
                listen.starts_with("0.0.0.0:"),
                "{name}: {binary} listens on {listen}, unreachable from other containers"
            );
            let port = port_of(listen);
            let check = words_of(&service["healthcheck"]["test"]);
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
            if binary.ends_with("-projector") {
                instance_ids.push(config.projector.group_instance_id.clone());
                workers.insert(binary.clone());
            }
        }
    }
    for binary in ["shop-commands", "shop-projector", "shop-query", "prismctl"] {
        assert!(seen_binaries.contains(binary), "no compose service runs {binary}");
    }
    let unmigrated: Vec<&String> = workers.difference(&migrated).collect();
    assert!(unmigrated.is_empty(), "projectors run whose application init never migrates: {unmigrated:?}");
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
        let job_name = str_of(&job["job_name"]);
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
            // Jobs are named after the binary they scrape (the k8s annotations use the same).
            assert_eq!(&job_name, binary, "scrape target {target}: job {job_name} scrapes {binary}");
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
    let workspace = Workspace::load();
    let dockerfile = read("ops/Dockerfile");
    let documents = kubernetes_documents();

    // The ConfigMap's production.toml, written where PRISM_CONFIG_DIR would point.
    let config_map = documents
        .iter()
        .find(|d| kind(d) == "ConfigMap" && d["metadata"]["name"].as_str() == Some("prism-config"))
        .expect("ConfigMap prism-config");
    let config_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(config_dir.path().join("production.toml"), str_of(&config_map["data"]["production.toml"]))
        .expect("write production.toml");
    let secret_file = secret_file(config_dir.path());

    let mut workloads = 0;
    let mut projector = None;
    let mut migrated = BTreeSet::new();
    let mut workers = BTreeSet::new();
    let mut served = BTreeSet::new();
    for doc in documents.iter().filter(|d| ["Deployment", "StatefulSet", "Job"].contains(&kind(d).as_str())) {
        let name = str_of(&doc["metadata"]["name"]);
        let workload = format!("{} {name}", kind(doc));
        let pod = &doc["spec"]["template"]["spec"];
        for container in pod["containers"].as_sequence().expect("containers") {
            workloads += 1;
            let runs = container_invocations(&container["command"], &workspace);
            assert!(!runs.is_empty(), "{workload}: its command runs no Prism binary");
            for run in &runs {
                assert!(
                    workspace.binaries.contains_key(&run.binary),
                    "{workload}: `{}` is no binary of the workspace",
                    run.binary
                );
                assert_dockerfile_builds(&dockerfile, &run.binary, &workload);
            }
            let mounts: Vec<String> = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|m| str_of(&m["mountPath"]))
                .collect();
            let mounted = |path: &str| mounts.iter().any(|m| path.starts_with(&format!("{m}/")));

            // The downward API's pod name: a StatefulSet's first pod is `<name>-0`.
            let pod_name = format!("{name}-0");
            let mut env = Vec::new();
            let mut environment = None;
            for var in container["env"].as_sequence().into_iter().flatten() {
                let var_name = str_of(&var["name"]);
                let value = if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    assert_eq!(field, "metadata.name", "{workload}: {var_name} from an unexpected field");
                    pod_name.clone()
                } else {
                    str_of(&var["value"])
                };
                if var_name == "PRISM_ENV" {
                    environment = Some(value);
                } else if var_name.ends_with("_FILE") {
                    assert!(mounted(&value), "{workload}: {var_name}={value} is not under a mounted volume");
                    env.push((var_name, secret_file.display().to_string()));
                } else {
                    env.push((var_name, value));
                }
            }
            let environment = environment.expect("PRISM_ENV selects production.toml");
            let config = load(&env, Some(config_dir.path()), Some(&environment))
                .unwrap_or_else(|e| panic!("{workload}: configuration does not load: {e}"));
            assert_typos_rejected(&env, Some(config_dir.path()), Some(&environment), &workload);
            assert_application_settings(&env, &config, &runs, &workload);
            assert!(mounted("/etc/prism/config/production.toml"), "{workload}: the ConfigMap is not mounted");
            assert_eq!(
                config.kafka.group_protocol,
                prism_config::GroupProtocol::Consumer,
                "{workload}: KIP-848 groups"
            );
            // The query service never talks to the brokers; everything else does.
            if !config.kafka.ssl_ca_location.is_empty() && runs.iter().any(|r| !r.binary.ends_with("-query"))
            {
                assert!(
                    mounted(&config.kafka.ssl_ca_location),
                    "{workload}: {} not mounted",
                    config.kafka.ssl_ca_location
                );
            }

            // The migrate Job: the application's migrate, then the topics, as the owner role.
            if runs.iter().any(|r| r.binary == "prismctl") {
                let ensure = runs.iter().position(Invocation::is_topics_ensure);
                let migrate = runs.iter().position(Invocation::is_migrate);
                assert!(
                    ensure.is_some() && migrate.is_some() && migrate < ensure,
                    "{workload}: `<app>-projector migrate && prismctl topics ensure` expected: {runs:?}"
                );
                assert_eq!(kind(doc), "Job", "{workload}: migrations run once, as a Job");
                assert!(
                    config.postgres.url.contains("prism_owner@"),
                    "{workload}: migrations run as prism_owner"
                );
                migrated.extend(runs.iter().filter(|r| r.is_migrate()).map(|r| r.binary.clone()));
            }

            for run in runs.iter().filter(|r| r.serves()) {
                let binary = &run.binary;
                let Some(listen) = listen_of(binary, &config) else { continue };
                served.insert(binary.clone());
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
                    doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
                    Some(port.to_string().as_str()),
                    "{workload}: Prometheus scrapes the port it listens on"
                );
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
                assert!(
                    !config.postgres.url.contains("prism_owner@"),
                    "{workload}: services never run as the owner role"
                );
                if binary.ends_with("-projector") {
                    assert_eq!(
                        kind(doc),
                        "StatefulSet",
                        "projectors need stable pod names for static membership"
                    );
                    assert_eq!(config.projector.group_instance_id, pod_name, "member id from the pod name");
                    let grace =
                        pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
                    assert!(
                        grace * 1000 > config.projector.shutdown_deadline_ms + config.projector.commit_interval_ms,
                        "{workload}: grace {grace}s must exceed projector.shutdown_deadline_ms ({} ms) and a commit",
                        config.projector.shutdown_deadline_ms
                    );
                    workers.insert(binary.clone());
                    projector = Some((name.clone(), config.clone()));
                }
            }
        }
    }
    assert!(workloads >= 4, "expected projector, commands, query and migrate workloads, found {workloads}");
    for binary in ["shop-commands", "shop-projector", "shop-query"] {
        assert!(served.contains(binary), "no workload serves {binary}: {served:?}");
    }
    let unmigrated: Vec<&String> = workers.difference(&migrated).collect();
    assert!(unmigrated.is_empty(), "projectors run whose application no Job migrates: {unmigrated:?}");

    let (statefulset, projector) = projector.expect("a projector StatefulSet");
    let scaled = documents.iter().find(|d| kind(d) == "ScaledObject").expect("a KEDA ScaledObject");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"].as_str(), Some("StatefulSet"));
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(statefulset.as_str()),
        "KEDA scales the projectors"
    );
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
        "PrismProjectorPartitionStalled",
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
    prism_testkit::ports::free_port().expect("a free port")
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
        prism_runtime::metric_names::PROJECTOR_STALLED_PARTITIONS,
        prism_runtime::metric_names::COMMANDS_OUTBOX_OLDEST_AGE,
        prism_runtime::metric_names::QUERY_CACHE_LOOKUPS,
    ] {
        assert!(referenced.contains(sure), "the name extraction missed {sure}: {referenced:?}");
    }

    let env = support::environment(&[]).await;

    // The shop's command service (API + relay), projector and query service, in this process.
    // They share the process-wide recorder (prism_runtime::telemetry::install), so each
    // /metrics renders all three.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let commands_url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop_commands, commands_stopped) = tokio::sync::oneshot::channel::<()>();
    let commands = tokio::spawn(shop_commands::serve(env.config.clone(), listener, async {
        let _ = commands_stopped.await;
    }));
    let mut projector_config = env.config.clone();
    projector_config.projector.listen = format!("127.0.0.1:{}", free_port());
    let projector_url = format!("http://{}", projector_config.projector.listen);
    let (stop_projector, projector_stopped) = tokio::sync::oneshot::channel::<()>();
    let projector = tokio::spawn(prism_projector::run(
        projector_config,
        support::shop(),
        prism_runtime::Health::new(),
        async {
            let _ = projector_stopped.await;
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let query_url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop_query, query_stopped) = tokio::sync::oneshot::channel::<()>();
    let query = tokio::spawn(shop_query::serve(env.config.clone(), listener, async {
        let _ = query_stopped.await;
    }));

    // Commands through the API (some deliberately invalid), published by the relay. The
    // service answers once it is up; the load waits for nothing else.
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !client.get(format!("{commands_url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(!commands.is_finished(), "shop-commands stopped during start-up");
        assert!(tokio::time::Instant::now() < deadline, "shop-commands not ready after 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = shop::load::run(&shop::load::LoadConfig {
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
        .filter(|e| e.meta.aggregate_type == ORDER)
        .map(|e| e.meta.aggregate_id)
        .find(|id| others.iter().filter(|e| e.meta.aggregate_id == *id).count() >= 3)
        .expect("an order with three events");
    let gapped: Vec<_> = others
        .iter()
        .filter(|e| e.meta.aggregate_id == gapped_order && e.meta.aggregate_version != 2)
        .cloned()
        .collect();
    publish_events(&producer, env.topic_prefix(), &gapped).await.expect("publish gap");
    let order_topic = ORDER.topic(env.topic_prefix());
    produce(&producer, &order_topic, Some(b"poison"), Some(b"{ not json"), &[])
        .await
        .expect("produce poison");

    // A few reads: a list and entity lookups (the cache is consulted first).
    for path in ["/products".to_owned(), format!("/orders/{gapped_order}"), format!("/users/{gapped_order}")]
    {
        let answered = client.get(format!("{query_url}{path}")).send().await;
        assert!(answered.is_ok(), "shop-query did not answer {path}: {answered:?}");
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
            panic!("shop-commands stopped early: {:?}", commands.await);
        }
        if projector.is_finished() {
            panic!("shop-projector stopped early: {:?}", projector.await);
        }
        if query.is_finished() {
            panic!("shop-query stopped early: {:?}", query.await);
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
    commands_result.expect("shop-commands stops in time").expect("commands task").expect("shop-commands");
    projector_result.expect("shop-projector stops in time").expect("projector task").expect("shop-projector");
    query_result.expect("shop-query stops in time").expect("query task").expect("shop-query");
}
