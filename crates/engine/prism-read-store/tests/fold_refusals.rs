//! A fold's refusals reach the engine from typed rows: a fold that returns a row keyed by
//! another aggregate, or a stored row that does not read as the fold's row type, dead-letters
//! exactly the event it happened on and parks the aggregate behind it, while the events before
//! it and every other aggregate land, in PostgreSQL and in what the cache is to hold.

use prism_events::{Event, EventRegistry};
use prism_projections::{Application, GapPolicy, ProjectionInstance, ReadModel, Unprojectable};
use prism_read_store::projection::{apply_batch, Target};
use prism_testkit::probe::{as_batch, batch_of, noted, Noted, PROBE};
use prism_testkit::TestEnv;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

const NOTE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, last bigint NOT NULL, count bigint NOT NULL)";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    id: Uuid,
    last: i64,
    count: i64,
}

/// Counts notes; on the note of 30 it returns a row keyed by another id (an application bug).
fn note_rekeying_thirty(current: Option<Note>, event: &Event) -> Result<Note, Unprojectable> {
    let noted = event.body::<Noted>().ok_or_else(|| Unprojectable::new("not a Noted event"))?;
    let count = current.map_or(0, |note| note.count) + 1;
    let id = if noted.n == 30 { Uuid::nil() } else { event.meta.aggregate_id };
    Ok(Note { id, last: noted.n, count })
}

/// The same table read as a row type it was not written as (a required column it lacks).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NoteWithTitle {
    id: Uuid,
    last: i64,
    count: i64,
    title: String,
}

fn titled(current: Option<NoteWithTitle>, event: &Event) -> Result<NoteWithTitle, Unprojectable> {
    let noted = event.body::<Noted>().ok_or_else(|| Unprojectable::new("not a Noted event"))?;
    let count = current.map_or(0, |note| note.count) + 1;
    Ok(NoteWithTitle { id: event.meta.aggregate_id, last: noted.n, count, title: String::new() })
}

fn documents(outcome: &prism_read_store::projection::BatchOutcome) -> Vec<(String, i64, Value)> {
    let mut entries: Vec<(String, i64, Value)> = outcome
        .cache_entries
        .iter()
        .map(|e| (e.id.clone(), e.version, serde_json::from_str(&e.document).expect("a JSON document")))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

#[tokio::test]
async fn a_row_keyed_by_another_aggregate_dead_letters_the_event_that_made_it() {
    let name = prism_projections::intern("fold_rekeying");
    let model =
        ReadModel::new(name).table(NOTE_TABLE).key(&["id"]).cached("note").fold(PROBE, note_rekeying_thirty);
    let app = Application::new(name, EventRegistry::of::<Noted>().expect("events"), vec![model])
        .expect("the test application");
    let env = TestEnv::new(&app).await.expect("test environment");
    let target =
        Target { instance: ProjectionInstance::new(name, 1), model: app.read_model(name).expect("model") };
    let (broken, fine) = (Uuid::new_v4(), Uuid::new_v4());
    let events: Vec<Event> =
        (1..=5).map(|v| noted(broken, v)).chain((1..=2).map(|v| noted(fine, v))).collect();

    let outcomes = apply_batch(&env.db, &[target], GapPolicy::DeadLetter, batch_of(&as_batch(events, 0)))
        .await
        .expect("the batch lands");
    let (_, outcome) = &outcomes[0];

    // Versions 1 and 2 of the broken aggregate and all of the fine one applied; version 3 is
    // the dead letter, 4 and 5 are parked behind it.
    assert_eq!(outcome.applied, 4, "{outcome:?}");
    let letters = &outcome.unpublished_dead_letters;
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0].aggregate_version, Some(3));
    assert!(
        letters[0].error_message.contains("is not the aggregate's id"),
        "says what was wrong: {}",
        letters[0].error_message
    );
    assert_eq!(outcome.parked_aggregates.len(), 1);
    let rows = env
        .db
        .client()
        .await
        .expect("client")
        .query(&format!("SELECT id, last, count, prism_version FROM {}_g1 ORDER BY id", name), &[])
        .await
        .expect("rows");
    let rows: Vec<(Uuid, i64, i64, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let mut expected = vec![(broken, 20, 2, 2), (fine, 20, 2, 2)];
    expected.sort_by_key(|row| row.0);
    assert_eq!(rows, expected);
    let mut cached = vec![
        (broken.to_string(), 2, json!({"id": broken, "last": 20, "count": 2})),
        (fine.to_string(), 2, json!({"id": fine, "last": 20, "count": 2})),
    ];
    cached.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(documents(outcome), cached);
}

#[tokio::test]
async fn a_stored_row_that_does_not_read_as_the_row_type_dead_letters_the_next_event() {
    let name = prism_projections::intern("fold_unreadable");
    let counting = ReadModel::new(name).table(NOTE_TABLE).key(&["id"]).fold(PROBE, note_rekeying_thirty);
    let app = Application::new(name, EventRegistry::of::<Noted>().expect("events"), vec![counting])
        .expect("the test application");
    let env = TestEnv::new(&app).await.expect("test environment");
    let instance = ProjectionInstance::new(name, 1);
    let id = Uuid::new_v4();
    let written = Target { instance, model: app.read_model(name).expect("model") };
    apply_batch(&env.db, &[written], GapPolicy::DeadLetter, batch_of(&as_batch(vec![noted(id, 1)], 0)))
        .await
        .expect("the first event lands");

    let titled_model = ReadModel::new(name).table(NOTE_TABLE).key(&["id"]).fold(PROBE, titled);
    let read_as_titled = Target { instance, model: &titled_model };
    let outcomes = apply_batch(
        &env.db,
        &[read_as_titled],
        GapPolicy::DeadLetter,
        batch_of(&as_batch(vec![noted(id, 2), noted(id, 3)], 1)),
    )
    .await
    .expect("the batch lands");
    let (_, outcome) = &outcomes[0];
    assert_eq!(outcome.applied, 0, "{outcome:?}");
    let letters = &outcome.unpublished_dead_letters;
    assert_eq!(letters.iter().map(|l| l.aggregate_version).collect::<Vec<_>>(), vec![Some(2), Some(3)]);
    assert!(
        letters[0].error_message.contains("does not read as") && letters[0].error_message.contains("title"),
        "says what was wrong: {}",
        letters[0].error_message
    );
    let row = env
        .db
        .client()
        .await
        .expect("client")
        .query_one(&format!("SELECT count, prism_version FROM {name}_g1 WHERE id = $1"), &[&id])
        .await
        .expect("the row");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 1), "the stored row is left as it was");
}
