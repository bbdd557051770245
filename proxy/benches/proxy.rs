//! Proxy benchmarks; prints Markdown tables.
//!
//!   cargo bench -p proxy --bench proxy [-- rate|failover]
//!
//! Three real members and one proxy in this process, real QUIC on
//! loopback, real redb with fsync.

use std::time::Duration;

use protocol::config::ProxyConfig;
use proxy::Proxy;
use tracker_cluster::testing::{write_load, write_load_notify, Target, TestCluster};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn cluster_and_proxy() -> (TestCluster, Proxy) {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(20)).await;
    let cfg = ProxyConfig {
        listen: "127.0.0.1:0".into(),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        ..Default::default()
    };
    let p = Proxy::start(cfg).await.unwrap();
    (c, p)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if want("rate") {
            rate().await;
        }
        if want("failover") {
            failover().await;
        }
    });
}

/// 64 clients, through the proxy and straight to the leader, alternating.
async fn rate() {
    let (c, p) = cluster_and_proxy().await;
    let direct = Target::Members(c.api_addrs());
    let via = Target::Proxy(p.addr, "proxy-1".into());
    let (mut dr, mut pr, mut d50, mut p50, mut d99, mut p99) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..3u64 {
        let mut d = write_load(&c.certs(), direct.clone(), 64, Duration::from_secs(4), 10 + run).await;
        let mut v = write_load(&c.certs(), via.clone(), 64, Duration::from_secs(4), 20 + run).await;
        assert_eq!(d.errors + v.errors, 0);
        dr.push(d.rate());
        pr.push(v.rate());
        d50.push(ms(d.quantile(0.5)));
        p50.push(ms(v.quantile(0.5)));
        d99.push(ms(d.quantile(0.99)));
        p99.push(ms(v.quantile(0.99)));
    }
    let (dr, pr) = (median(dr), median(pr));
    println!("\n| 64 clients, writes | writes/s | p50 ms | p99 ms |\n|---|---|---|---|");
    println!(
        "| straight to the leader | {dr:.0} | {:.2} | {:.2} |",
        median(d50.clone()),
        median(d99.clone())
    );
    println!(
        "| through the proxy | {pr:.0} | {:.2} | {:.2} |",
        median(p50.clone()),
        median(p99.clone())
    );
    println!(
        "| proxy / direct | {:.0}% | +{:.2} | +{:.2} |",
        100.0 * pr / dr,
        median(p50) - median(d50),
        median(p99) - median(d99)
    );
    p.shutdown().await;
}

/// The pause a client sees when the leader is killed under 64-client load
/// through the proxy, 10 kills.
async fn failover() {
    let (mut c, p) = cluster_and_proxy().await;
    let via = Target::Proxy(p.addr, "proxy-1".into());
    let mut pauses = vec![];
    let mut errors = 0;
    let mut lost = 0;
    for k in 0..10u64 {
        let leader = c.wait_agreed_leader(Duration::from_secs(20)).await;
        let idx = c.tracker(leader).app.metrics().last_applied.unwrap().index;
        for id in c.running_ids() {
            c.wait_applied(id, idx, Duration::from_secs(30)).await;
        }
        let certs = c.certs();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let load = tokio::spawn({
            let via = via.clone();
            async move { write_load_notify(&certs, via, 64, Duration::from_secs(3), 100 + k, Some(tx)).await }
        });
        // Once the timed writes run, let them reach a steady state, then kill.
        rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.kill(leader);
        let mut r = load.await.unwrap();
        errors += r.errors;
        pauses.push(ms(r.quantile(1.0)));
        c.start(leader);
        // Every acknowledged write must be on the new leader, once the
        // members agree on it (the restarted one may briefly believe it
        // still leads its old term).
        let nl = c.wait_agreed_leader(Duration::from_secs(20)).await;
        let idx = c.tracker(nl).app.metrics().last_applied.unwrap().index;
        c.wait_applied(nl, idx, Duration::from_secs(30)).await;
        let st = c.tracker(nl).app.state.read();
        let mut missing = 0;
        for id in &r.acked {
            if st.registry.owners(id, |_| true).is_err() {
                missing += 1;
            }
        }
        lost += missing;
    }
    let mut sorted = pauses.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("\n| leader killed under 64-client load through the proxy (10 kills) | value |\n|---|---|");
    println!("| longest pause, median of kills | {:.0} ms |", median(pauses));
    println!("| longest pause, max | {:.0} ms |", sorted.last().unwrap());
    println!("| errors seen by clients | {errors} |\n| acknowledged writes lost | {lost} |");
    println!(
        "(all: {})",
        sorted.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join(", ")
    );
    p.shutdown().await;
}
