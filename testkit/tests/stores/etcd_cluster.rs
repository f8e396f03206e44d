//! The testkit's etcd cluster and partition proxy against real etcd processes: elections
//! after kill -9, rejoining after restart, pause/resume, and a proxy cut that really stalls
//! gRPC.

use std::time::{Duration, Instant};

use baton_testkit::etcd::{EtcdCluster, MemberState};
use baton_testkit::eventually;
use baton_testkit::proxy::Proxy;
use etcd_client::Client;

const REQUEST: Duration = Duration::from_secs(3);

async fn get_value(client: &mut Client, key: &str) -> anyhow::Result<Option<String>> {
    let resp = tokio::time::timeout(REQUEST, client.get(key, None)).await??;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

async fn put(client: &mut Client, key: &str, value: &str) -> anyhow::Result<()> {
    tokio::time::timeout(REQUEST, client.put(key, value, None)).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_failover_restart_and_pause() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cluster = EtcdCluster::start(3).await?;
    eprintln!("3 members healthy after {:?}", started.elapsed());
    assert_eq!(cluster.endpoints().len(), 3);
    let leader = cluster.leader_index().await.expect("a leader");

    // A write through member 0 is read through member 2.
    put(&mut cluster.member_client(0).await?, "k", "v1").await?;
    let mut c2 = cluster.member_client(2).await?;
    assert_eq!(get_value(&mut c2, "k").await?.as_deref(), Some("v1"));

    // Kill etcd's own leader: the other two elect one of themselves and take writes.
    cluster.kill9(leader);
    assert_eq!(cluster.member(leader).state(), MemberState::Killed);
    let failover = Instant::now();
    let new_leader = eventually(Duration::from_secs(15), "a new etcd leader", || async {
        cluster.leader_index().await.filter(|&l| l != leader)
    })
    .await?;
    eprintln!("new leader {new_leader} after {:?}", failover.elapsed());
    let survivor = (0..3).find(|&i| i != leader && i != new_leader).unwrap();
    put(&mut cluster.member_client(survivor).await?, "k", "v2").await?;

    // The killed member comes back on the same ports and data and serves the new value.
    cluster.restart(leader).await?;
    assert_eq!(cluster.member(leader).generation, 1);
    let mut back = cluster.member_client(leader).await?;
    assert_eq!(get_value(&mut back, "k").await?.as_deref(), Some("v2"));

    // A paused member answers nothing; resumed, it serves again.
    // (Ask again: the restart may have moved leadership.)
    let leader_now = cluster.leader_index().await.expect("a leader");
    let paused = (0..3).find(|&i| i != leader_now).unwrap();
    cluster.pause(paused);
    let mut pc = cluster.member_client(paused).await?;
    let stalled = tokio::time::timeout(Duration::from_secs(1), pc.get("k", None)).await;
    assert!(stalled.is_err(), "a paused member answered: {stalled:?}");
    // The other two still form a majority.
    let other = (0..3).find(|&i| i != paused).unwrap();
    put(&mut cluster.member_client(other).await?, "k", "v3").await?;
    cluster.resume(paused);
    cluster.wait_healthy().await?;
    let mut pc = cluster.member_client(paused).await?;
    assert_eq!(get_value(&mut pc, "k").await?.as_deref(), Some("v3"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_cut_stalls_grpc_and_heal_lets_new_clients_in() -> anyhow::Result<()> {
    let cluster = EtcdCluster::start(1).await?;
    let proxy = Proxy::start(cluster.member(0).client_addr())?;
    let mut c = Client::connect([proxy.url()], None).await?;
    put(&mut c, "p", "through").await?;
    assert_eq!(get_value(&mut c, "p").await?.as_deref(), Some("through"));

    proxy.cut();
    assert!(proxy.is_cut());
    let r = tokio::time::timeout(Duration::from_secs(1), c.get("p", None)).await;
    assert!(r.is_err(), "a get through a cut proxy finished: {r:?}");
    // A new client gets no further: its connection is accepted but never forwarded.
    let mut fresh = Client::connect([proxy.url()], None).await?;
    let r = tokio::time::timeout(Duration::from_secs(1), fresh.get("p", None)).await;
    assert!(r.is_err(), "a new client got through a cut proxy: {r:?}");
    // The member itself is fine.
    let mut direct = cluster.member_client(0).await?;
    assert_eq!(
        get_value(&mut direct, "p").await?.as_deref(),
        Some("through")
    );

    proxy.heal();
    let mut healed = Client::connect([proxy.url()], None).await?;
    assert_eq!(
        get_value(&mut healed, "p").await?.as_deref(),
        Some("through")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_reset_closes_connections_at_once() -> anyhow::Result<()> {
    let cluster = EtcdCluster::start(1).await?;
    let proxy = Proxy::start(cluster.member(0).client_addr())?;
    let mut c = Client::connect([proxy.url()], None).await?;
    put(&mut c, "r", "1").await?;

    // Cut and reset: the old connection is gone and a new one hangs, so nothing succeeds.
    proxy.cut_now_and_reset();
    let r = tokio::time::timeout(Duration::from_secs(1), c.get("r", None)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a get succeeded through a reset, cut proxy"
    );
    proxy.heal();
    let mut healed = Client::connect([proxy.url()], None).await?;
    assert_eq!(get_value(&mut healed, "r").await?.as_deref(), Some("1"));
    Ok(())
}
