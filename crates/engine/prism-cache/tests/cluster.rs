//! The cache on a real Redis Cluster (three masters, three replicas of Debian's redis-server,
//! started per test by `prism_testkit::private::redis_cluster`): writes spread over every slot
//! and master land, the compare-and-set still refuses older revisions, prefix deletes reach
//! every master, reads follow the cluster through a resharding and a failover, and a write
//! the cache reported done survives the failover of its master.
//!
//! A test that cannot start the cluster fails naming what is missing (`ops/dev-stack up`
//! installs redis-server).

use std::collections::BTreeSet;

use prism_cache::{key_slot, Cache, CacheError, Cached, Entry};
use prism_config::{ConfigSources, PrismConfig, RedisMode};
use prism_testkit::private::redis_cluster::PrivateRedisCluster;

const PREFIX: &str = "prism-test:g1:row:";

async fn start_cluster() -> PrivateRedisCluster {
    PrivateRedisCluster::start()
        .await
        .expect("a private Redis Cluster starts (see the message for what is missing)")
}

/// The cache in cluster mode, configured through the real loader with `extra` settings.
async fn connect(cluster: &PrivateRedisCluster, extra: &[(&str, &str)]) -> Cache {
    let mut env: Vec<(String, String)> = vec![
        ("PRISM__REDIS__MODE".into(), "cluster".into()),
        ("PRISM__REDIS__URL".into(), cluster.seed_url()),
        ("PRISM__REDIS__CLUSTER_SEEDS".into(), format!("[\"{}\", \"{}\"]", cluster.url(1), cluster.url(2))),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config =
        PrismConfig::load(&ConfigSources { env, ..Default::default() }).expect("configuration loads");
    assert_eq!(config.redis.mode, RedisMode::Cluster);
    assert_eq!(config.redis.cluster_seeds.len(), 2, "seeds from PRISM__REDIS__CLUSTER_SEEDS");
    Cache::connect(&config.redis).await.expect("the cache connects to the cluster")
}

fn keys(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{PREFIX}{tag}-{i:05}")).collect()
}

fn document(key: &str, revision: i64) -> String {
    format!(r#"{{"key":"{key}","revision":{revision}}}"#)
}

/// Writes every key at `revision` (documents naming key and revision); returns how many the
/// cache reported written.
async fn put_all(cache: &Cache, keys: &[String], revision: i64) -> Result<usize, CacheError> {
    let documents: Vec<String> = keys.iter().map(|k| document(k, revision)).collect();
    let entries: Vec<Entry<'_>> = keys
        .iter()
        .zip(&documents)
        .map(|(key, document)| Entry { key, revision, version: revision, document })
        .collect();
    cache.put_if_newer(&entries).await
}

fn entry(key: &str, revision: i64) -> Cached {
    Cached { revision, version: revision, document: document(key, revision) }
}

/// Keys matching `PREFIX*` on node `i` itself.
async fn keys_on_node(cluster: &PrivateRedisCluster, i: usize, pattern: &str) -> BTreeSet<String> {
    cluster.keys_on_node(i, pattern).await.expect("SCAN on a cluster node")
}

/// A key of `PREFIX` whose slot `slot_ok` accepts.
fn key_where(tag: &str, slot_ok: impl Fn(u16) -> bool) -> String {
    (0..).map(|i| format!("{PREFIX}{tag}-{i}")).find(|k| slot_ok(key_slot(k.as_bytes()))).expect("some key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_many_slots_land_on_every_master() {
    let cluster = start_cluster().await;
    let cache = connect(&cluster, &[]).await;
    let keys = keys(2000, "spread");
    let slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert!(slots.len() > 1500, "the keys cover {} slots", slots.len());

    // Every entry lands, in one call, whatever slot and master it belongs to.
    assert_eq!(put_all(&cache, &keys, 1).await.expect("a write over many slots"), keys.len());
    for key in &keys {
        assert_eq!(cache.get(key).await.expect("read"), Some(entry(key, 1)), "{key}");
    }
    // Each master holds exactly the keys of its slots, and all of them hold some.
    let masters = cluster.masters().await.expect("masters");
    assert_eq!(masters.len(), 3);
    let mut total = 0;
    for &master in &masters {
        let held = keys_on_node(&cluster, master, &format!("{PREFIX}*")).await;
        assert!(held.len() > keys.len() / 6, "master {master} holds only {} keys", held.len());
        for key in &held {
            assert_eq!(
                cluster.master_of_slot(key_slot(key.as_bytes())).await.expect("owner"),
                master,
                "{key}"
            );
        }
        total += held.len();
    }
    assert_eq!(total, keys.len(), "every key on exactly one master");

    // The slot the cache computes is the one Redis computes.
    let mut node = cluster.node(0).await.expect("node");
    for key in keys.iter().step_by(97) {
        let slot: u16 =
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut node).await.expect("keyslot");
        assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_refuses_older_revisions_on_a_cluster() {
    let cluster = start_cluster().await;
    let cache = connect(&cluster, &[]).await;
    let keys = keys(600, "cas");
    assert_eq!(put_all(&cache, &keys, 5).await.expect("first write"), keys.len());

    // Older and equal revisions are refused, by projector writes and by refills alike.
    assert_eq!(put_all(&cache, &keys, 3).await.expect("older write"), 0);
    assert_eq!(put_all(&cache, &keys, 5).await.expect("equal write"), 0);
    let stale: Vec<String> = keys.iter().map(|k| document(k, 4)).collect();
    let refills: Vec<Entry<'_>> = keys
        .iter()
        .zip(&stale)
        .map(|(key, document)| Entry { key, revision: 4, version: 4, document })
        .collect();
    assert_eq!(cache.refill_if_newer(&refills).await.expect("older refill"), 0);
    for key in &keys {
        assert_eq!(cache.get(key).await.expect("read"), Some(entry(key, 5)), "{key} kept revision 5");
    }

    // Newer revisions win, entry by entry, in a batch mixing newer and older ones.
    let mixed: Vec<(String, i64)> =
        keys.iter().enumerate().map(|(i, k)| (k.clone(), if i % 2 == 0 { 7 } else { 2 })).collect();
    let documents: Vec<String> = mixed.iter().map(|(k, r)| document(k, *r)).collect();
    let entries: Vec<Entry<'_>> = mixed
        .iter()
        .zip(&documents)
        .map(|((key, revision), document)| Entry { key, revision: *revision, version: *revision, document })
        .collect();
    assert_eq!(cache.put_if_newer(&entries).await.expect("mixed write"), keys.len() / 2);
    for (i, key) in keys.iter().enumerate() {
        let want = if i % 2 == 0 { 7 } else { 5 };
        assert_eq!(cache.get(key).await.expect("read"), Some(entry(key, want)), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_delete_removes_keys_on_every_master() {
    let cluster = start_cluster().await;
    let cache = connect(&cluster, &[]).await;
    let doomed = keys(900, "doomed");
    let kept: Vec<String> = (0..300).map(|i| format!("prism-test:g2:row:kept-{i:05}")).collect();
    put_all(&cache, &doomed, 1).await.expect("write");
    put_all(&cache, &kept, 1).await.expect("write");
    let masters = cluster.masters().await.expect("masters");
    for &master in &masters {
        assert!(
            !keys_on_node(&cluster, master, &format!("{PREFIX}*")).await.is_empty(),
            "master {master} holds keys to delete"
        );
    }

    assert_eq!(cache.delete_prefix(PREFIX).await.expect("prefix delete"), doomed.len() as u64);
    for &master in &masters {
        let left = keys_on_node(&cluster, master, &format!("{PREFIX}*")).await;
        assert!(
            left.is_empty(),
            "master {master} still holds {} keys: {:?}",
            left.len(),
            left.iter().take(3).collect::<Vec<_>>()
        );
    }
    let mut survivors = 0;
    for &master in &masters {
        survivors += keys_on_node(&cluster, master, "prism-test:g2:*").await.len();
    }
    assert_eq!(survivors, kept.len(), "keys outside the prefix stay");
    assert_eq!(cache.delete_prefix(PREFIX).await.expect("again"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_follow_a_slot_moved_to_another_master() {
    let cluster = start_cluster().await;
    let cache = connect(&cluster, &[]).await;
    let key = key_where("moved", |_| true);
    let slot = key_slot(key.as_bytes());
    put_all(&cache, std::slice::from_ref(&key), 1).await.expect("write");
    assert_eq!(cache.get(&key).await.expect("read"), Some(entry(&key, 1)));

    let from = cluster.master_of_slot(slot).await.expect("owner");
    let to = *cluster.masters().await.expect("masters").iter().find(|m| **m != from).expect("another master");
    cluster.move_slot(slot, to).await.expect("slot moved");
    assert!(keys_on_node(&cluster, from, &key).await.is_empty(), "the key left its old master");
    assert_eq!(keys_on_node(&cluster, to, &key).await.len(), 1, "the key is on its new master");

    // The cache's connection still routes the slot to the old master, which answers MOVED.
    assert_eq!(cache.get(&key).await.expect("read after the move"), Some(entry(&key, 1)));
    assert_eq!(put_all(&cache, std::slice::from_ref(&key), 2).await.expect("write after the move"), 1);
    assert_eq!(put_all(&cache, std::slice::from_ref(&key), 1).await.expect("older write after the move"), 0);
    assert_eq!(cache.get(&key).await.expect("read"), Some(entry(&key, 2)));
    assert_eq!(keys_on_node(&cluster, to, &key).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_follow_a_failover() {
    let mut cluster = start_cluster().await;
    let cache = connect(&cluster, &[]).await;
    let keys = keys(300, "failover");
    put_all(&cache, &keys, 1).await.expect("write");
    let slot = key_slot(keys[0].as_bytes());

    let (killed, promoted) = cluster.fail_over_slot(slot).await.expect("failover");
    assert_ne!(killed, promoted);
    // Every entry confirmed before the failover is there, read from whichever master has it.
    for key in &keys {
        assert_eq!(cache.get(key).await.expect("read after the failover"), Some(entry(key, 1)), "{key}");
    }
    // The promoted master has no replica: writes go on rather than wait for one.
    assert_eq!(put_all(&cache, &keys, 2).await.expect("write after the failover"), keys.len());
    for key in &keys {
        assert_eq!(cache.get(key).await.expect("read"), Some(entry(key, 2)), "{key}");
    }
    assert!(!keys_on_node(&cluster, promoted, &format!("{PREFIX}*")).await.is_empty());

    // The killed node comes back as the promoted one's replica; writes wait for it again.
    cluster.restart(killed).await.expect("restart");
    cluster.wait_until_settled().await.expect("settled");
    assert_eq!(cluster.replica_of(promoted).await.expect("replica"), killed);
    assert_eq!(put_all(&cache, &keys, 3).await.expect("write with the replica back"), keys.len());
    cache.ping().await.expect("every master answers");
}

/// Redis replicates asynchronously: a master can acknowledge a write and die before its
/// replica has it, and the promoted replica then serves the older entry until the row changes
/// again. A projector's write must therefore not count as done until the replica has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reported_done_survives_the_failover_of_its_master() {
    let mut cluster = start_cluster().await;
    let cache = connect(&cluster, &[("PRISM__REDIS__CLUSTER_REPLICA_ACK_TIMEOUT_MS", "300")]).await;
    let key = key_where("durable", |_| true);
    let slot = key_slot(key.as_bytes());
    put_all(&cache, std::slice::from_ref(&key), 1).await.expect("first write");
    let master = cluster.master_of_slot(slot).await.expect("owner");
    let replica = cluster.replica_of(master).await.expect("replica");

    // The replica hangs: the master still takes the write, but it is not replicated.
    cluster.pause(replica).expect("pause the replica");
    let unconfirmed = put_all(&cache, std::slice::from_ref(&key), 2).await;
    let err = unconfirmed.expect_err("a write no replica has must not be reported done");
    assert!(matches!(err, CacheError::NotReplicated { acked: 0, wanted: 1, .. }), "{err}");
    assert!(err.is_transient(), "the projector retries it: {err}");

    // The master dies with the write; the replica, which never saw it, takes over.
    cluster.kill(master).await.expect("kill the master");
    cluster.resume(replica).expect("resume the replica");
    cluster.wait_for_promotion(replica).await.expect("promotion");
    // Whether the replica got revision 2 depends on what reached its socket before the pause;
    // either way the cache never said it had it.
    let after = cache.get(&key).await.expect("read after the failover").expect("the entry");
    assert!(after.revision == 1 || after.revision == 2, "{after:?}");

    // The retry lands, and is confirmed (the promoted master has no replica to wait for).
    put_all(&cache, std::slice::from_ref(&key), 2).await.expect("the retry");
    assert_eq!(cache.get(&key).await.expect("read"), Some(entry(&key, 2)));
}

/// A replica that lost its link could still be promoted without the write, so writes wait
/// for it — until the cluster declares it failed: then they go on (the projectors never stall
/// for good), and once it is back, they wait for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_a_disconnected_replica_until_the_cluster_declares_it_failed() {
    let mut cluster = start_cluster().await;
    let cache = connect(&cluster, &[("PRISM__REDIS__CLUSTER_REPLICA_ACK_TIMEOUT_MS", "300")]).await;
    let key = key_where("link", |_| true);
    let slot = key_slot(key.as_bytes());
    put_all(&cache, std::slice::from_ref(&key), 1).await.expect("first write");
    let master = cluster.master_of_slot(slot).await.expect("owner");
    let replica = cluster.replica_of(master).await.expect("replica");

    // The replica hangs and the master drops its link: the master has no replica online.
    cluster.pause(replica).expect("pause the replica");
    let mut on_master = cluster.node(master).await.expect("master connection");
    let dropped: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut on_master)
        .await
        .expect("CLIENT KILL");
    assert_eq!(dropped, 1, "the replica's link was dropped");
    let err = put_all(&cache, std::slice::from_ref(&key), 2)
        .await
        .expect_err("the disconnected replica is not failed yet and could take over without the write");
    assert!(matches!(err, CacheError::NotReplicated { acked: 0, wanted: 1, .. }), "{err}");

    cluster.wait_until_marked_failed(replica).await.expect("the cluster marks the replica failed");
    // The retry is done (the master kept the first attempt's entry, so it writes nothing new).
    put_all(&cache, std::slice::from_ref(&key), 2).await.expect("no replica left to wait for");
    assert_eq!(cache.get(&key).await.expect("read"), Some(entry(&key, 2)));

    cluster.resume(replica).expect("resume the replica");
    cluster.wait_until_settled().await.expect("the replica is back in sync");
    assert_eq!(put_all(&cache, std::slice::from_ref(&key), 3).await.expect("write with the replica back"), 1);
    cluster.pause(replica).expect("pause the replica again");
    let err =
        put_all(&cache, std::slice::from_ref(&key), 4).await.expect_err("writes wait for the replica again");
    assert!(matches!(err, CacheError::NotReplicated { .. }), "{err}");
    cluster.resume(replica).expect("resume");
}

/// A projector's write that finds the entry already there (a query refilled it, unconfirmed)
/// writes nothing; it must still not report done before a replica has that entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_finding_an_unreplicated_refill_waits_for_it() {
    let mut cluster = start_cluster().await;
    let settings = [("PRISM__REDIS__CLUSTER_REPLICA_ACK_TIMEOUT_MS", "300")];
    // Two processes: a query service refilling, a projector writing.
    let (query, projector) = (connect(&cluster, &settings).await, connect(&cluster, &settings).await);
    let key = key_where("refilled", |_| true);
    let slot = key_slot(key.as_bytes());
    assert_eq!(put_all(&projector, std::slice::from_ref(&key), 1).await.expect("first write"), 1);
    let replica =
        cluster.replica_of(cluster.master_of_slot(slot).await.expect("owner")).await.expect("replica");

    cluster.pause(replica).expect("pause the replica");
    let doc = document(&key, 2);
    let refill = Entry { key: &key, revision: 2, version: 2, document: &doc };
    assert_eq!(query.refill_if_newer(&[refill]).await.expect("a refill does not wait for replicas"), 1);
    let err = put_all(&projector, std::slice::from_ref(&key), 2)
        .await
        .expect_err("the projector's write of revision 2 must wait until a replica has revision 2");
    assert!(matches!(err, CacheError::NotReplicated { .. }), "{err}");

    cluster.resume(replica).expect("resume the replica");
    assert_eq!(put_all(&projector, std::slice::from_ref(&key), 2).await.expect("confirmed now"), 0);
    let mut on_replica = cluster.node(replica).await.expect("replica connection");
    let () = redis::cmd("READONLY").query_async(&mut on_replica).await.expect("READONLY");
    let revision: Option<i64> =
        redis::cmd("HGET").arg(&key).arg("rev").query_async(&mut on_replica).await.expect("HGET");
    assert_eq!(revision, Some(2), "the replica has the refilled revision");
}

/// `WAIT` waits for the replication offset the waiting connection reached with its last
/// command — on some Redis versions only with a command that replicated something (Debian's
/// 7.0 counts every command). So when a confirmed call finds nothing newer to write, the
/// script rewrites one entry's revision unchanged: the call then replicates something on
/// every version, and the caller's `WAIT` covers whatever write put that entry there (which
/// may have been another client's, unconfirmed — see the refill test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_call_that_writes_nothing_still_replicates_something() {
    let cluster = start_cluster().await;
    let cache = connect(&cluster, &[]).await;
    let key = key_where("touch", |_| true);
    put_all(&cache, std::slice::from_ref(&key), 3).await.expect("write");
    let mut master = cluster
        .node(cluster.master_of_slot(key_slot(key.as_bytes())).await.expect("owner"))
        .await
        .expect("master");
    let script = redis::Script::new(include_str!("../src/put_if_newer.lua"));
    let doc = document(&key, 2);
    let call = |confirm: &'static str| {
        let mut invocation = script.prepare_invoke();
        invocation.arg(confirm).key(&key).arg(2).arg(2).arg(&doc);
        invocation
    };
    let offset = |text: String| -> i64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
            .and_then(|n| n.parse().ok())
            .expect("offset")
    };

    // Unconfirmed, not newer: nothing replicated. (The master pings its replicas every 10 s
    // through the same stream; a ping between the two readings is retried.)
    let mut unchanged = false;
    for _ in 0..3 {
        let before =
            offset(redis::cmd("INFO").arg("replication").query_async(&mut master).await.expect("INFO"));
        let written: usize = call("0").invoke_async(&mut master).await.expect("script");
        assert_eq!(written, 0);
        let after =
            offset(redis::cmd("INFO").arg("replication").query_async(&mut master).await.expect("INFO"));
        if after == before {
            unchanged = true;
            break;
        }
    }
    assert!(unchanged, "an unconfirmed call that writes nothing replicates nothing");

    let before = offset(redis::cmd("INFO").arg("replication").query_async(&mut master).await.expect("INFO"));
    let written: usize = call("1").invoke_async(&mut master).await.expect("script");
    assert_eq!(written, 0, "revision 2 is older than the cached 3");
    let after = offset(redis::cmd("INFO").arg("replication").query_async(&mut master).await.expect("INFO"));
    assert!(
        after > before,
        "a confirmed call that writes nothing must still replicate something ({before} -> {after})"
    );
    assert_eq!(cache.get(&key).await.expect("read"), Some(entry(&key, 3)), "the touch changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_that_does_not_match_the_server_is_refused_at_connect() {
    let cluster = start_cluster().await;
    let load = |env: Vec<(String, String)>| {
        PrismConfig::load(&ConfigSources { env, ..Default::default() }).expect("configuration loads").redis
    };
    let standalone_on_cluster = load(vec![("PRISM__REDIS__URL".into(), cluster.seed_url())]);
    let err = Cache::connect(&standalone_on_cluster).await.expect_err("standalone mode on a cluster node");
    assert!(err.to_string().contains("redis.mode = \"cluster\""), "{err}");
    assert!(!err.is_transient());

    let dev_redis = prism_testkit::Services::from_env();
    dev_redis.check_redis().await.expect("the development Redis answers (ops/dev-stack up)");
    let cluster_on_standalone = load(vec![
        ("PRISM__REDIS__MODE".into(), "cluster".into()),
        ("PRISM__REDIS__URL".into(), dev_redis.redis.clone()),
    ]);
    let err = Cache::connect(&cluster_on_standalone).await.expect_err("cluster mode on a standalone server");
    assert!(err.to_string().contains("redis.mode = \"standalone\""), "{err}");

    let err = PrismConfig::load(&ConfigSources {
        env: vec![("PRISM__REDIS__CLUSTER_SEEDS".into(), format!("[\"{}\"]", cluster.url(1)))],
        ..Default::default()
    })
    .expect_err("seeds in standalone mode");
    assert!(err.to_string().contains("redis.cluster_seeds"), "{err}");
    let err = PrismConfig::load(&ConfigSources {
        env: vec![("PRISM__REDIS__MODE".into(), "clustr".into())],
        ..Default::default()
    })
    .expect_err("an unknown mode");
    assert!(err.to_string().contains("clustr"), "{err}");
    let cluster_config = |extra: (&str, &str)| {
        let env = vec![
            ("PRISM__REDIS__MODE".to_owned(), "cluster".to_owned()),
            ("PRISM__REDIS__URL".to_owned(), "rediss://cache.example:6380/0".to_owned()),
            (extra.0.to_owned(), extra.1.to_owned()),
        ];
        PrismConfig::load(&ConfigSources { env, ..Default::default() }).map(|_| ()).map_err(|e| e.to_string())
    };
    for (extra, names) in [
        (("PRISM__REDIS__CLUSTER_SEEDS", "[\"redis://cache-2.example:6380\"]"), "same scheme as redis.url"),
        (
            ("PRISM__REDIS__CLUSTER_SEEDS", "[\"rediss://u:secret@cache-2.example:6380\"]"),
            "contains a password",
        ),
        (("PRISM__REDIS__TLS_CA_CERT", "/etc/prism/ca.pem"), "system's trust store"),
        (("PRISM__REDIS__CLUSTER_REPLICA_ACK_TIMEOUT_MS", "0"), "cluster_replica_ack_timeout_ms"),
    ] {
        let err = cluster_config(extra).expect_err(extra.0);
        assert!(err.contains(names) && !err.contains("secret"), "{extra:?}: {err}");
    }
    cluster_config(("PRISM__REDIS__CLUSTER_SEEDS", "[\"rediss://cache-2.example:6380\"]"))
        .expect("a valid cluster setup");
}
