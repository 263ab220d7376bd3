//! Shared by the engine's command-side tests: an aggregate over the test kit's domain-free
//! probe events, its routes, and an in-process command service.

#![allow(dead_code)]

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use prism_commands::http::{respond, tracked, ApiError, ApiState, CommandHeaders, JsonBody, PathIds};
use prism_commands::CommandApi;
use prism_events::Aggregate;
use prism_testkit::probe::{Noted, PROBE};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

/// A running tally of probe notes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Sum of the notes.
    pub total: i64,
    /// Notes applied.
    pub notes: u64,
}

/// What a tally can be asked.
#[derive(Debug, Clone)]
pub enum Note {
    /// Note `n`, creating the tally when it has no notes yet.
    Open(i64),
    /// Note `n` on an existing tally.
    Add(i64),
    /// Note nothing (a no-op the aggregate accepts).
    Nothing,
    /// Note each of these, as separate events.
    Many(Vec<i64>),
}

/// Why a tally refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not opened.
    #[error("no such tally")]
    NotFound,
    /// A zero note.
    #[error("a note must not be zero")]
    Zero,
}

/// A stored event a tally cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tally cannot follow note {0}")]
pub struct Unfollowable(pub i64);

impl Aggregate for Tally {
    type Event = Noted;
    type Command = Note;
    type Error = Refusal;
    type EvolveError = Unfollowable;
    const TYPE: prism_events::AggregateType = PROBE;

    fn evolve(&mut self, event: &Noted) -> Result<(), Unfollowable> {
        if event.n == 0 {
            return Err(Unfollowable(0));
        }
        self.total += event.n;
        self.notes += 1;
        Ok(())
    }

    fn decide(&self, command: &Note) -> Result<Vec<Noted>, Refusal> {
        let notes: Vec<i64> = match command {
            Note::Open(n) => vec![*n],
            Note::Add(n) => {
                if !self.exists() {
                    return Err(Refusal::NotFound);
                }
                vec![*n]
            }
            Note::Nothing => {
                if !self.exists() {
                    return Err(Refusal::NotFound);
                }
                Vec::new()
            }
            Note::Many(notes) => notes.clone(),
        };
        if notes.contains(&0) {
            return Err(Refusal::Zero);
        }
        Ok(notes.into_iter().map(|n| Noted { n }).collect())
    }

    fn exists(&self) -> bool {
        self.notes > 0
    }
}

/// `POST /tallies/{id}`: `{"n", "open"?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// The note.
    pub n: i64,
    /// Open the tally.
    #[serde(default)]
    pub open: Option<bool>,
}

/// `POST /tallies/{id}/touch`: every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchBody {
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotFound => ApiError::not_found("tally not found"),
        Refusal::Zero => ApiError::invalid_field("n", "must not be zero"),
    }
}

async fn note(
    State(api): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<NoteBody>,
) -> Result<Response, ApiError> {
    let id = path.uuid("id")?;
    let command =
        if body.value.open.unwrap_or(false) { Note::Open(body.value.n) } else { Note::Add(body.value.n) };
    let reply = api
        .service
        .execute::<Tally>(id, command, &headers.meta(&body.digest))
        .await
        .map_err(|err| ApiError::from_service(err, refusal))?;
    Ok(respond(reply))
}

async fn touch(
    State(api): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<TouchBody>,
) -> Result<Response, ApiError> {
    let id = path.uuid("id")?;
    let _ = body.value.reason;
    let reply = api
        .service
        .execute::<Tally>(id, Note::Nothing, &headers.meta(&body.digest))
        .await
        .map_err(|err| ApiError::from_service(err, refusal))?;
    Ok(respond(reply))
}

/// The probe's command API.
pub fn api() -> CommandApi {
    let routes = Router::new()
        .route("/tallies/{id}", tracked("note", post(note)))
        .route("/tallies/{id}/touch", tracked("touch", post(touch)));
    CommandApi {
        events: prism_testkit::probe::application().events().clone(),
        routes,
        name: "probe-commands",
    }
}

/// A running command service.
pub struct Server {
    /// Base URL.
    pub base: String,
    /// The client.
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Status, headers and JSON body (`Null` when empty or not JSON), with the raw text.
#[derive(Debug)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// `error.<name>` of an error body.
    pub fn error(&self, name: &str) -> Option<&str> {
        self.body.get("error")?.get(name)?.as_str()
    }
}

impl Server {
    /// Starts the probe's command API on a free port.
    pub async fn start(config: prism_config::PrismConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(prism_commands::serve(config, api(), listener, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Self { base, http, stop: Some(stop), task: Some(task) }
    }

    /// Sends `body` bytes with an optional content type.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        answer(request.send().await.expect("request")).await
    }

    /// POSTs `body` as JSON.
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        answer(self.http.post(format!("{}{path}", self.base)).json(&body).send().await.expect("request"))
            .await
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Answer {
        answer(self.http.get(format!("{}{path}", self.base)).send().await.expect("request")).await
    }

    /// Stops the service and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("service task").expect("service ended with an error");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, headers, body, text }
}
