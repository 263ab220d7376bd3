//! The checksum a rebuild prints and a blue/green switch compares
//! (`prism_read_store::rebuild::checksum`), against the real PostgreSQL: equal for the same
//! rows whatever order they were written in and whatever their revisions, different when one
//! value of one row differs, and computed in one pass without holding the table's text in one
//! string (a sorted, joined text of every row failed past PostgreSQL's 1 GB string limit).

use prism_projections::ProjectionInstance;
use prism_read_store::rebuild::checksum;
use prism_testkit::TestEnv;

/// Creates `instance`'s table with the engine's bookkeeping columns, and a row per id of `ids`,
/// inserted in that order, each with a revision of its own (its position times 7).
async fn table_with_rows(client: &tokio_postgres::Client, instance: ProjectionInstance, ids: &[i64]) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, label text NOT NULL, amount numeric NOT NULL, \
             prism_version bigint NOT NULL, prism_revision bigint NOT NULL)",
            table = instance.id()
        ))
        .await
        .expect("the table");
    client
        .execute(
            &format!(
                "INSERT INTO {} SELECT id, 'row ' || id, id * 1.5, 3, n * 7 \
                 FROM unnest($1::bigint[]) WITH ORDINALITY AS u (id, n)",
                instance.id()
            ),
            &[&ids],
        )
        .await
        .expect("the rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_rows_in_any_order_sum_the_same_and_one_changed_value_does_not() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let client = env.pg().await.expect("pg");
    let (first, second, empty) = (
        ProjectionInstance::new("checksum_probe", 1),
        ProjectionInstance::new("checksum_probe", 2),
        ProjectionInstance::new("checksum_probe", 3),
    );
    let ids: Vec<i64> = (1..=500).collect();
    let reversed: Vec<i64> = ids.iter().rev().copied().collect();
    table_with_rows(&client, first, &ids).await;
    table_with_rows(&client, second, &reversed).await;
    table_with_rows(&client, empty, &[]).await;

    let (a, b) = (
        checksum(&client, first).await.expect("checksum"),
        checksum(&client, second).await.expect("checksum"),
    );
    assert_eq!(a.rows, 500);
    assert_eq!(a, b, "the same rows, written in the opposite order with other revisions");
    assert_eq!(a.md5.len(), 32, "an md5 in hex: {}", a.md5);

    let none = checksum(&client, empty).await.expect("checksum of an empty table");
    assert_eq!(none.rows, 0);
    assert_ne!(none.md5, a.md5);

    client
        .execute(&format!("UPDATE {} SET amount = amount + 0.01 WHERE id = 250", second.id()), &[])
        .await
        .expect("one value changed");
    let changed = checksum(&client, second).await.expect("checksum");
    assert_eq!(changed.rows, 500);
    assert_ne!(changed.md5, a.md5, "one value of one row differs");

    client
        .execute(
            &format!("UPDATE {} SET amount = id * 1.5, prism_revision = 1 WHERE id = 250", second.id()),
            &[],
        )
        .await
        .expect("the value restored, the revision not");
    assert_eq!(
        checksum(&client, second).await.expect("checksum"),
        a,
        "the revision is not part of the checksum"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_text_passes_a_gigabyte_is_summed() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let client = env.pg().await.expect("pg");
    let large = ProjectionInstance::new("checksum_probe", 1);
    // 1 100 rows of a 1 MB label each: 1.1 GB of row text, stored compressed in a few MB.
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, label text NOT NULL, \
             prism_version bigint NOT NULL, prism_revision bigint NOT NULL); \
             INSERT INTO {table} SELECT id, repeat(md5(id::text), 32768), 1, 1 FROM generate_series(1, 1100) id",
            table = large.id()
        ))
        .await
        .expect("the large table");
    let sum = checksum(&client, large).await.expect("the checksum of 1.1 GB of rows");
    assert_eq!(sum.rows, 1100);
}
