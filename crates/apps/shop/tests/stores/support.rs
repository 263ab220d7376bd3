//! Set-ups the store tests share: orders as one partition's messages and batches, a second
//! generation's table, and a row written by another transaction while a batch or chunk runs.

use prism_projections::ProjectionInstance;
use prism_read_store::projection::{MessageContent, PartitionBatch, SourceMessage};
use prism_testkit::TestEnv;
use shop_model::aggregates::ORDER;
use uuid::Uuid;

/// The topic the store tests' batches of orders come from.
pub const ORDER_TOPIC: &str = "orders";
/// The partition of [`ORDER_TOPIC`] they come from.
pub const ORDER_PARTITION: i32 = 0;

/// The order events of `events` as [`ORDER_TOPIC`]'s messages, offsets 0, 1, …
pub fn order_messages(events: &[prism_events::Event]) -> Vec<SourceMessage> {
    events
        .iter()
        .filter(|e| e.meta.aggregate_type == ORDER)
        .enumerate()
        .map(|(i, e)| SourceMessage {
            offset: i as i64,
            key: None,
            value: None,
            content: MessageContent::Event(e.clone()),
        })
        .collect()
}

/// `messages` as a batch of [`ORDER_TOPIC`]'s partition [`ORDER_PARTITION`].
pub fn order_batch(messages: &[SourceMessage]) -> PartitionBatch<'_> {
    PartitionBatch { source: ORDER, topic: ORDER_TOPIC, partition: ORDER_PARTITION, messages }
}

/// Creates `to`'s table in the shape of `from`'s (a generation the tests land finished rows in).
pub async fn create_table_like(env: &TestEnv, from: ProjectionInstance, to: ProjectionInstance) {
    let client = env.pg().await.expect("pg");
    client
        .batch_execute(&format!("CREATE TABLE {} (LIKE {} INCLUDING ALL)", to.id(), from.id()))
        .await
        .expect("a second generation's table");
}

/// Runs `work` while another transaction holds order `order_id`'s row, copied from
/// `finished`'s table into `instance`'s, uncommitted; commits it once `work` has waited on it
/// for half a second, and returns what `work` returned.
pub async fn with_order_row_written_meanwhile<T: Send + 'static>(
    env: &TestEnv,
    instance: ProjectionInstance,
    finished: ProjectionInstance,
    order_id: Uuid,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let mut other = env.pg().await.expect("pg");
    let writer = other.transaction().await.expect("transaction");
    let copied = writer
        .execute(
            &format!("INSERT INTO {} SELECT * FROM {} WHERE order_id = $1", instance.id(), finished.id()),
            &[&order_id],
        )
        .await
        .expect("the other transaction's row");
    assert_eq!(copied, 1, "the other transaction writes {order_id}'s row");
    let work = tokio::spawn(work);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    writer.commit().await.expect("commit");
    work.await.expect("the task waiting on the row")
}
