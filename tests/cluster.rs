//! Cluster mode end to end (issue 18, decision 0016): three real gateway
//! processes share strict budgets through a real `redis-server` started
//! here on its own port and directory, with real clients over real sockets.

mod util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::redis::Redis;
use util::{counter, pico, proxy_config, Client, Gateway, Mock, Response, CHAT, CHAT_STREAM};

const ADMIN: &str = "admin-secret";
/// What the mock bills CHAT and CHAT_STREAM at gpt-4o-mini's prices (see
/// tests/budgets.rs): $0.0000042.
const CHAT_COST_PICO: i128 = 8 * 150_000 + 5 * 600_000;
const KEY: &str = "sk-search-prod";

fn admin(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    util::admin_request(gw, ADMIN, method, path, body)
}

/// This node's share of the spend at `level` (`node_spent_usd`).
fn spent(gw: &Gateway, level: &str) -> i128 {
    let r = admin(gw, "GET", &format!("/admin/spend/{level}"), "");
    assert_eq!(r.status, 200, "{level}: {}", r.text());
    pico(r.json()["node_spent_usd"].as_str().unwrap())
}

/// The cluster's spend at `level` as this node's view shows it.
fn cluster_spent(gw: &Gateway, level: &str) -> i128 {
    util::spent_at(gw, ADMIN, level)
}

/// A node's config: the key's budget `key_limit` a day, its team's and
/// customer's larger, all calendar-aligned (cluster mode's rule).
fn node_config(mock: &Mock, redis: &Redis, node: &str, key_limit: &str) -> String {
    proxy_config(
        &mock.base_url(),
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[cluster]
redis_url = "{url}"
node = "{node}"
lease_ttl = "2s"

[[customers]]
name = "acme"
budget = {{ limit_usd = "100", reset = "1M", calendar_aligned = true }}

[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "50", reset = "1d", calendar_aligned = true }}

[[virtual_keys]]
name = "search-prod"
team = "search"
key = "{KEY}"
budget = {{ limit_usd = "{key_limit}", reset = "1d", calendar_aligned = true }}
"#,
            url = redis.url()
        ),
    )
}

fn start_nodes(mock: &Mock, redis: &Redis, key_limit: &str) -> Vec<Gateway> {
    start_nodes_with(mock, redis, key_limit, "")
}

/// Three nodes, `extra` appended to each config, the operational alerts'
/// sampler every 100 ms (a debug build's knob).
fn start_nodes_with(mock: &Mock, redis: &Redis, key_limit: &str, extra: &str) -> Vec<Gateway> {
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let dir = util::TempDir::new("cluster-node");
            let path = dir.0.join("bursar.toml");
            std::fs::write(
                &path,
                format!("{}{extra}", node_config(mock, redis, n, key_limit)),
            )
            .unwrap();
            Gateway::spawn_with(dir, path, &[], |cmd| {
                cmd.env("BURSAR_DEBUG_OPERATIONAL_INTERVAL_MS", "100");
            })
        })
        .collect()
}

/// A webhook channel to `receiver` and a rule sending it the operational
/// alerts.
fn operational_alerts(receiver: &Receiver) -> String {
    format!(
        r#"
[[alerts.channels]]
name = "ops-hook"
kind = "webhook"
url = "http://{}/ops"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.rules]]
name = "ops"
scope = "all"
operational = true
channels = ["ops-hook"]
"#,
        receiver.addr
    )
}

/// Redis's view of the key's budget today: the sum over nodes of each
/// field kind (`c`, `l`, `h`, `o`) of its hash, and the limit.
fn redis_sums(redis: &Redis) -> (i128, i128, i128, i128, i128) {
    let keys = redis_keys(redis, "bursar:{key:search-prod}:*");
    assert_eq!(keys.len(), 1, "one period's hash: {keys:?}");
    hash_sums(redis, &keys[0])
}

fn redis_keys(redis: &Redis, pattern: &str) -> Vec<String> {
    let mut c = redis.connect().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
    keys.sort();
    keys
}

/// One hash's sums over nodes of each field kind (`c`, `l`, `h`, `o`),
/// and its limit.
fn hash_sums(redis: &Redis, key: &str) -> (i128, i128, i128, i128, i128) {
    let mut c = redis.connect().unwrap();
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut c).unwrap();
    let mut sums = [0i128; 4];
    let mut limit = 0;
    for (k, v) in fields {
        if k == "limit" {
            limit = v.parse().unwrap();
            continue;
        }
        let slot = match k.split_once(':').map(|(kind, _)| kind) {
            Some("c") => 0,
            Some("l") => 1,
            Some("h") => 2,
            Some("o") => 3,
            _ => continue,
        };
        sums[slot] += v.parse::<i128>().unwrap();
    }
    (sums[0], sums[1], sums[2], sums[3], limit)
}

/// Waits until `f` holds (a bounded time: pushes go out every 100 ms).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_strict_budget_over_three_nodes_never_overshoots_and_redis_equals_what_clients_saw() {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let limit = "0.0005"; // ~119 requests' worth of 4.2 µ$, shared by three nodes
    let nodes = start_nodes(&mock, &redis, limit);
    let threads_per_node = 16;
    let per_thread = 8; // 384 requests in all, over three nodes
    let costs = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads_per_node * nodes.len())
        .map(|t| {
            let addr = nodes[t % nodes.len()].addr;
            let costs = Arc::clone(&costs);
            let statuses = Arc::clone(&statuses);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..per_thread {
                    let body = if (t + i) % 2 == 0 { CHAT } else { CHAT_STREAM };
                    let r = c.post(
                        "/v1/chat/completions",
                        KEY,
                        body,
                        &[("x-mock-delay-ms", "5")],
                    );
                    statuses.lock().unwrap().push(r.status);
                    if r.status == 200 {
                        costs
                            .lock()
                            .unwrap()
                            .push(pico(r.cost_usd().expect("a 200 carries its cost")));
                    } else {
                        assert_eq!(r.status, 402, "{}", r.text());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let costs = costs.lock().unwrap();
    let statuses = statuses.lock().unwrap();
    let total: i128 = costs.iter().sum();
    assert_eq!(statuses.len(), threads_per_node * nodes.len() * per_thread);
    assert!(costs.iter().all(|&c| c == CHAT_COST_PICO));
    // The bound: the nodes together never spent past the limit.
    assert!(total <= pico(limit), "overspent: {total} > {}", pico(limit));
    assert!(statuses.contains(&402), "the budget allowed everything");
    assert!(
        costs.len() >= 60,
        "only {} of ~119 affordable requests were admitted",
        costs.len()
    );
    // Each node's books hold its own share; together, what clients saw.
    let per_node: Vec<i128> = nodes.iter().map(|g| spent(g, "keys/search-prod")).collect();
    assert_eq!(per_node.iter().sum::<i128>(), total, "{per_node:?}");
    assert!(
        per_node.iter().all(|&s| s > 0),
        "every node served: {per_node:?}"
    );
    for level in ["teams/search", "customers/acme"] {
        let sum: i128 = nodes.iter().map(|g| spent(g, level)).sum();
        assert_eq!(sum, total, "{level}");
    }
    // Redis's contributions come to the same, and its books balance.
    eventually("Redis's contributions to equal what clients saw", || {
        redis_sums(&redis).0 == total
    });
    // Every node's view shows the cluster's spend: what clients saw.
    for g in &nodes {
        for level in ["keys/search-prod", "teams/search", "customers/acme"] {
            assert_eq!(cluster_spent(g, level), total, "{level}");
        }
        let list = admin(g, "GET", "/admin/budgets?kind=key", "").json();
        let row = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "search-prod")
            .cloned()
            .unwrap();
        assert_eq!(pico(row["spent_usd"].as_str().unwrap()), total);
    }
    let (c, l, h, o, redis_limit) = redis_sums(&redis);
    assert_eq!(redis_limit, pico(limit));
    assert!(c + l + h <= redis_limit, "{c} + {l} + {h} > {redis_limit}");
    assert_eq!(o, 0, "a node spent beyond its node leases");
    for g in &nodes {
        assert_eq!(counter(g, "bursar_budget_overruns_total"), 0);
        assert_eq!(counter(g, "bursar_ledger_ring_rejected_total"), 0);
        // Every Redis call succeeded (a script error is counted here).
        assert_eq!(counter(g, "bursar_cluster_errors_total"), 0);
    }
}

#[test]
fn a_rolling_budget_is_refused_in_cluster_mode() {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let config = node_config(&mock, &redis, "n1", "1").replace(
        r#"{ limit_usd = "50", reset = "1d", calendar_aligned = true }"#,
        r#"{ limit_usd = "50", reset = "1d" }"#,
    );
    let dir = util::TempDir::new("cluster-rolling");
    let path = dir.0.join("bursar.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("team \"search\"") && err.contains("calendar-aligned"),
        "{err}"
    );
}

/// The fields of one node in the key's hash today: its contribution,
/// lease and held money.
fn redis_node(redis: &Redis, node: &str) -> (i128, i128, i128) {
    let mut c = redis.connect().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("bursar:{key:search-prod}:*")
        .query(&mut c)
        .unwrap();
    let get = |c: &mut redis::Connection, f: &str| -> i128 {
        redis::cmd("HGET")
            .arg(&keys[0])
            .arg(format!("{f}:{node}"))
            .query::<Option<String>>(c)
            .unwrap()
            .map_or(0, |v| v.parse().unwrap())
    };
    (get(&mut c, "c"), get(&mut c, "l"), get(&mut c, "h"))
}

fn chat(t: usize) -> &'static str {
    if t.is_multiple_of(2) {
        CHAT
    } else {
        CHAT_STREAM
    }
}

#[test]
fn a_node_killed_mid_load_loses_no_charge_and_its_leases_come_back() {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let limit = "1"; // ~238,000 requests: the load does not reach it
    let mut nodes = start_nodes(&mock, &redis, limit);
    let threads = 6;
    let loads: Vec<_> = nodes
        .iter()
        .map(|g| util::LoadUntilCut::start(g.addr, threads, KEY, &[("x-mock-delay-ms", "2")], chat))
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    // kill -9 of n2 mid-load; the others keep serving.
    let n2 = nodes.remove(1);
    let n2 = n2.kill_and_restart_later();
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<i128> = loads.into_iter().map(|l| l.stop()).collect();
    let seen_total: i128 = seen.iter().sum();
    assert!(seen.iter().all(|&s| s > 0), "{seen:?}");
    // While n2 is down, what it held is still counted: its lease, or once
    // that expires, its held money.
    let (_, l2, h2) = redis_node(&redis, "n2");
    assert!(l2 + h2 > 0, "n2's leases vanished while it was down");
    let n2 = n2.start();
    nodes.insert(1, n2);
    // Its restart declares its state: nothing of the dead process's leases
    // stays held, and its contribution is its journal's.
    eventually("n2's old leases to come back", || {
        let (_, l, h) = redis_node(&redis, "n2");
        l == 0 && h == 0
    });
    let per_node: Vec<i128> = nodes.iter().map(|g| spent(g, "keys/search-prod")).collect();
    let books: i128 = per_node.iter().sum();
    // No completed charge is lost; at most one per n2 client was settled
    // (in its ring) but cut by the kill before the client read it.
    assert!(books >= seen_total, "{books} < {seen_total}");
    assert!(
        books <= seen_total + threads as i128 * CHAT_COST_PICO,
        "{books} > {seen_total} + {threads} requests"
    );
    assert!(books <= pico(limit));
    eventually("Redis's contributions to equal the nodes' books", || {
        redis_sums(&redis).0 == books
    });
    let (c, l, h, o, redis_limit) = redis_sums(&redis);
    assert!(c + l + h <= redis_limit);
    assert_eq!(o, 0);
    // The money the dead process held is drawable again: the survivors and
    // n2 take leases from it (l may be theirs, but held money is gone).
    assert_eq!(h, 0);
}

/// Polls `f` until it holds; the time it took (a liveness bound of 10 s,
/// not a speed claim: docs/benchmarks.md measures the propagation).
fn time_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

#[test]
fn an_admin_change_on_one_node_applies_on_every_node() {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let nodes = start_nodes(&mock, &redis, "0.0005");
    // A rolling budget cannot be shared: refused as bad input, not applied.
    let r = admin(
        &nodes[0],
        "POST",
        "/admin/keys",
        r#"{"name":"rolling","budget":{"limit_usd":"1","reset":"1d"}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("calendar"), "{}", r.text());
    // A key created on n1 serves on n2 and n3.
    let r = admin(
        &nodes[0],
        "POST",
        "/admin/keys",
        r#"{"name":"ml-batch","team":"search","budget":{"limit_usd":"0.0001","reset":"1d","calendar_aligned":true}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let secret = r.json()["key"].as_str().unwrap().to_string();
    for g in &nodes[1..] {
        let mut c = Client::connect(g.addr);
        time_until("the new key on another node", || {
            c.post("/v1/chat/completions", &secret, CHAT, &[]).status == 200
        });
        assert_eq!(
            admin(g, "GET", "/admin/keys/ml-batch", "").json()["source"],
            "api"
        );
    }
    // A limit lowered on n2 holds on all three: together the nodes stop at
    // the new limit (each node's spend is its share; Redis has the sum).
    let r = admin(
        &nodes[1],
        "PATCH",
        "/admin/keys/search-prod",
        r#"{"budget":{"limit_usd":"0.00005","reset":"1d","calendar_aligned":true}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for g in &nodes {
        time_until("the new limit on every node", || {
            admin(g, "GET", "/admin/spend/keys/search-prod", "").json()["limit_usd"] == "0.00005"
        });
    }
    let mut seen = 0;
    for round in 0..6 {
        for g in &nodes {
            let mut c = Client::connect(g.addr);
            let r = c.post("/v1/chat/completions", KEY, CHAT, &[]);
            if r.status == 200 {
                seen += pico(r.cost_usd().unwrap());
            } else {
                assert_eq!(r.status, 402, "round {round}: {}", r.text());
            }
        }
    }
    assert!(seen > 0);
    assert!(seen <= pico("0.00005"), "{seen} past the lowered limit");
    eventually("Redis's contributions", || redis_sums(&redis).0 == seen);
    assert_eq!(redis_sums(&redis).4, pico("0.00005"));
    // A node behind the cluster's definitions cannot change them: here
    // another writer moved the version without announcing it, so every
    // node is behind; a proposal is refused (409) and nothing changes.
    let mut rc = redis.connect().unwrap();
    redis::cmd("HINCRBY")
        .arg("bursar:governance")
        .arg("version")
        .arg(1)
        .query::<i64>(&mut rc)
        .unwrap();
    let r = admin(&nodes[2], "DELETE", "/admin/keys/ml-batch", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        admin(&nodes[2], "GET", "/admin/keys/ml-batch", "").status,
        200
    );
    // Announced, the version is applied everywhere, and the change goes in.
    redis::cmd("XADD")
        .arg("bursar:changes")
        .arg("*")
        .arg("version")
        .arg("x")
        .query::<String>(&mut rc)
        .unwrap();
    time_until("the announced version on n3", || {
        admin(&nodes[2], "DELETE", "/admin/keys/ml-batch", "").status == 200
    });
    for g in &nodes {
        time_until("the deletion on every node", || {
            admin(g, "GET", "/admin/keys/ml-batch", "").status == 404
        });
    }
}

/// Sends chat requests round the nodes with `key` until every node has
/// answered 402 in one round, twice, with a pause between longer than a
/// refused node's retry (refused nodes give back what they hold, and a
/// retry may draw the pieces together); the cost of every 200.
fn spend_until_refused(nodes: &[Gateway], key: &str) -> i128 {
    let mut clients: Vec<Client> = nodes.iter().map(|g| Client::connect(g.addr)).collect();
    let mut seen = 0;
    let mut paused = false;
    for round in 0..200 {
        let mut refused = 0;
        for c in &mut clients {
            let r = c.post("/v1/chat/completions", key, CHAT, &[]);
            match r.status {
                200 => seen += pico(r.cost_usd().unwrap()),
                402 => refused += 1,
                s => panic!("round {round}: {s} {}", r.text()),
            }
        }
        if refused < nodes.len() {
            paused = false;
        } else if paused {
            return seen;
        } else {
            std::thread::sleep(Duration::from_millis(2500));
            paused = true;
        }
    }
    panic!("the budget was never used up");
}

#[test]
fn a_reset_or_top_up_on_one_node_applies_on_every_node_and_the_bound_holds() {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let prepaid = r#"
[[virtual_keys]]
name = "prepaid"
team = "search"
key = "sk-prepaid"
budget = { limit_usd = "0.00002" }
"#;
    let nodes = start_nodes_with(&mock, &redis, "0.00005", prepaid);
    let limit = pico("0.00005");
    // Used up over the three nodes.
    let before = spend_until_refused(&nodes, KEY);
    // Strict: never past the limit; what is left is less than one
    // request's worst case, and no node holds any of it (the refused ones
    // gave theirs back, so their remainders were drawn together).
    assert!(before <= limit && before >= limit / 2, "{before}");
    let (_, leased, held, _, _) = redis_sums(&redis);
    assert_eq!((leased, held), (0, 0));
    // Reset on n2: every node starts over at the same instant (the new
    // period's start, the same on all), and the nodes together spend the
    // limit again, never more.
    let r = admin(&nodes[1], "POST", "/admin/keys/search-prod/reset", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let start = r.json()["period_start"].as_str().unwrap().to_string();
    assert_eq!(r.json()["spent_usd"], "0");
    for g in &nodes {
        time_until("the reset on every node", || {
            let v = admin(g, "GET", "/admin/spend/keys/search-prod", "").json();
            v["period_start"] == start.as_str() && v["spent_usd"] == "0"
        });
    }
    let after = spend_until_refused(&nodes, KEY);
    assert!(after <= limit, "{after} past the limit after the reset");
    assert!(after >= limit / 2, "{after}");
    // Redis: the day's hash as it was, the reset's own hash with exactly
    // what the clients saw after it.
    let keys = redis_keys(&redis, "bursar:{key:search-prod}:*");
    assert_eq!(keys.len(), 2, "{keys:?}");
    let reset_ms = keys
        .iter()
        .filter_map(|k| k.rsplit(':').next()?.parse::<i64>().ok())
        .max()
        .unwrap();
    let reset_key = format!("bursar:{{key:search-prod}}:{reset_ms}");
    eventually("the reset's contributions", || {
        hash_sums(&redis, &reset_key).0 == after
    });
    let day_key = keys.iter().find(|k| **k != reset_key).unwrap();
    assert_eq!(hash_sums(&redis, day_key).0, before);
    for g in &nodes {
        eventually("every node's view of the cluster", || {
            cluster_spent(g, "keys/search-prod") == after
        });
    }
    // A second reset, on n3, right away: applied once more, everywhere.
    let r = admin(&nodes[2], "POST", "/admin/keys/search-prod/reset", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json()["period_start"].as_str().unwrap().to_string();
    assert!(second > start, "{second} after {start}");
    for g in &nodes {
        time_until("the second reset on every node", || {
            admin(g, "GET", "/admin/spend/keys/search-prod", "").json()["period_start"]
                == second.as_str()
        });
    }
    // A prepaid budget: used up, topped up on n3, every node's limit
    // rises by the top-up and together they stop at it.
    let prepaid_limit = pico("0.00002");
    let used = spend_until_refused(&nodes, "sk-prepaid");
    assert!(used <= prepaid_limit, "{used}");
    let r = admin(
        &nodes[2],
        "POST",
        "/admin/keys/prepaid/top-up",
        r#"{"amount_usd":"0.00001"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limit_usd"], "0.00003");
    for g in &nodes {
        time_until("the top-up on every node", || {
            admin(g, "GET", "/admin/spend/keys/prepaid", "").json()["limit_usd"] == "0.00003"
        });
    }
    let more = spend_until_refused(&nodes, "sk-prepaid");
    assert!(more > 0, "nothing served after the top-up");
    assert!(
        used + more <= pico("0.00003"),
        "{} past the topped-up limit",
        used + more
    );
    let prepaid_keys = redis_keys(&redis, "bursar:{key:prepaid}:*");
    assert_eq!(
        prepaid_keys,
        vec!["bursar:{key:prepaid}:prepaid".to_string()]
    );
    eventually("the prepaid hash", || {
        let (c, _, _, _, limit) = hash_sums(&redis, &prepaid_keys[0]);
        c == used + more && limit == pico("0.00003")
    });
    // A budget that is not prepaid cannot be topped up; one without a
    // budget cannot be reset (only budgets are shared).
    let r = admin(
        &nodes[0],
        "POST",
        "/admin/keys/search-prod/top-up",
        r#"{"amount_usd":"1"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin(&nodes[0], "POST", "/admin/providers/local/reset", "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no budget"), "{}", r.text());
    // A node restarted keeps the resets and top-ups (its journal has them).
    let n1 = nodes.into_iter().next().unwrap().kill_and_restart(&[]);
    let v = admin(&n1, "GET", "/admin/spend/keys/search-prod", "").json();
    assert_eq!(v["period_start"], second.as_str());
    let v = admin(&n1, "GET", "/admin/spend/keys/prepaid", "").json();
    assert_eq!(v["limit_usd"], "0.00003");
}

/// Clients on every node sending chat requests until stopped, each adding
/// up the cost of every 200 it read; a 402 (the budget, or the cluster
/// unreachable once the node's leases are used up) is allowed, nothing
/// else is.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<(i128, u64)>>,
}

impl Load {
    fn start(nodes: &[Gateway], per_node: usize) -> Load {
        let addrs: Vec<_> = nodes.iter().map(|g| g.addr).collect();
        Load::start_on(&addrs, per_node)
    }

    /// `per_addr` clients on each address (an address given twice gets
    /// twice the clients).
    fn start_on(addrs: &[std::net::SocketAddr], per_addr: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..per_addr * addrs.len())
            .map(|t| {
                let addr = addrs[t % addrs.len()];
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let (mut seen, mut refused) = (0i128, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = c.post(
                            "/v1/chat/completions",
                            KEY,
                            chat(t),
                            &[("x-mock-delay-ms", "2")],
                        );
                        match r.status {
                            200 => seen += pico(r.cost_usd().expect("a 200 carries its cost")),
                            402 => {
                                refused += 1;
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            s => panic!("{s}: {}", r.text()),
                        }
                    }
                    (seen, refused)
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients: what they saw charged, and how many 402s.
    fn stop(self) -> (i128, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

/// How Redis goes away mid-load in [`redis_goes_away_mid_load`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Killed, and started again empty.
    Empty,
    /// A `SAVE` taken, 300 ms of load more, killed: it comes back from
    /// the older snapshot.
    OldSnapshot,
    /// `SHUTDOWN SAVE`: it comes back with all its data.
    Saved,
}

/// Redis goes away mid-load and comes back as `outage` says: the nodes
/// fail closed while it is away, no node overshoots or double counts, the
/// hashes are whole again (repaired from the nodes' journals when Redis
/// lost state, with the drift reported and the operators told).
fn redis_goes_away_mid_load(outage: Outage) {
    let mut redis = Redis::start();
    let mock = Mock::start(&[]);
    let receiver = Receiver::start();
    let limit = "0.003"; // ~714 requests: the load reaches it
    let nodes = start_nodes_with(&mock, &redis, limit, &operational_alerts(&receiver));
    let load = Load::start(&nodes, 3);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = redis.connect().unwrap();
    match outage {
        Outage::Empty => {}
        Outage::OldSnapshot => {
            redis::cmd("SAVE").query::<String>(&mut c).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        // The server saves and exits: the command's connection just closes.
        Outage::Saved => {
            let _ = redis::cmd("SHUTDOWN").arg("SAVE").query::<()>(&mut c);
        }
    }
    redis.kill();
    std::thread::sleep(Duration::from_millis(400));
    redis.restart();
    std::thread::sleep(Duration::from_millis(3000));
    let (seen, refused) = load.stop();
    // No overshoot across the outage; and the load did reach the limit.
    assert!(seen <= pico(limit), "overspent: {seen} > {}", pico(limit));
    assert!(refused > 0);
    // No double count: the nodes' books hold exactly what clients saw.
    let books: i128 = nodes.iter().map(|g| spent(g, "keys/search-prod")).sum();
    assert_eq!(books, seen);
    // Redis's totals are whole again.
    eventually("Redis's contributions", || redis_sums(&redis).0 == seen);
    let (c, l, h, o, redis_limit) = redis_sums(&redis);
    assert!(c + l + h <= redis_limit, "{c} + {l} + {h} > {redis_limit}");
    assert_eq!(o, 0);
    let losses: u64 = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_losses_total"))
        .sum();
    let drift: u64 = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_drift_picodollars_total"))
        .sum();
    if outage == Outage::Saved {
        // Its data came back whole: no hash had gone back in time.
        assert_eq!((losses, drift), (0, 0));
        return;
    }
    // The loss was found and measured, and said to the operators.
    assert!(losses > 0, "no loss reported");
    assert!(drift > 0, "no drift reported");
    eventually("the cluster alerts", || {
        receiver.count("operational.cluster_unavailable") > 0
            && receiver.count("operational.cluster_drift") > 0
    });
}

/// With `[cluster] nodes`, a node that is down while Redis loses its
/// state holds the budget closed until it is back: its spend, which only
/// its journal has, is counted again before anyone draws. (Without the
/// list the others would draw on a total missing its share.)
#[test]
fn a_node_down_while_redis_loses_its_state_keeps_the_budget_closed_until_it_is_back() {
    let mut redis = Redis::start();
    let mock = Mock::start(&[]);
    let limit = "0.006"; // ~1,400 requests: the load reaches it
    let nodes: Vec<Gateway> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let config = node_config(&mock, &redis, n, limit).replace(
                "lease_ttl = \"2s\"",
                "lease_ttl = \"2s\"\nnodes = [\"n1\", \"n2\", \"n3\"]",
            );
            assert!(config.contains("nodes = "));
            Gateway::start(&config, &[])
        })
        .collect();
    let mut nodes = nodes;
    let n3 = nodes.pop().unwrap();
    let load12 = Load::start(&nodes, 3);
    let load3 = Load::start(std::slice::from_ref(&n3), 3);
    std::thread::sleep(Duration::from_millis(600));
    // n3 stops (its clients first, then kill -9); Redis restarts empty.
    let (seen3, _) = load3.stop();
    assert!(seen3 > 0);
    let n3 = n3.kill_and_restart_later();
    redis.kill();
    std::thread::sleep(Duration::from_millis(200));
    redis.restart();
    // The other two run on: the lost hash grants nothing without n3.
    std::thread::sleep(Duration::from_millis(4000));
    let draws_before: u64 = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_draws_quarantined_total"))
        .sum();
    assert!(draws_before > 0, "no draw was held back while n3 was down");
    // n3 returns and declares what its journal holds: the budget opens.
    let n3 = n3.start();
    std::thread::sleep(Duration::from_millis(3000));
    let (seen12, refused) = load12.stop();
    assert!(refused > 0);
    let seen = seen12 + seen3;
    assert!(seen <= pico(limit), "overspent: {seen} > {}", pico(limit));
    // Every charge a client saw is in the books (n3's kill may have cut a
    // settled response per client of its).
    nodes.push(n3);
    let books: i128 = nodes.iter().map(|g| spent(g, "keys/search-prod")).sum();
    assert!(
        books >= seen && books <= seen + 3 * CHAT_COST_PICO,
        "{books} vs {seen}"
    );
    assert!(books <= pico(limit), "the books passed the limit: {books}");
    eventually("Redis's contributions", || redis_sums(&redis).0 == books);
}

#[test]
fn redis_restarted_empty_mid_load_neither_overshoots_nor_double_counts() {
    redis_goes_away_mid_load(Outage::Empty);
}

#[test]
fn redis_restarted_from_an_old_snapshot_neither_overshoots_nor_double_counts() {
    redis_goes_away_mid_load(Outage::OldSnapshot);
}

#[test]
fn redis_stopped_and_restarted_with_its_data_neither_overshoots_nor_double_counts() {
    redis_goes_away_mid_load(Outage::Saved);
}

/// A local webhook receiver: answers 200 to every POST and keeps its JSON
/// bodies.
struct Receiver {
    addr: std::net::SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(v) = serde_json::from_slice(&body) {
                            kept.lock().unwrap().push(v);
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
        Receiver { addr, bodies }
    }

    /// How many alerts of `kind` arrived.
    fn count(&self, kind: &str) -> usize {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == kind)
            .count()
    }

    /// The budget events received for the key, by type.
    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == kind && b["data"]["entity"]["name"] == "search-prod")
            .cloned()
            .collect()
    }
}

#[test]
fn budget_alerts_are_sent_once_for_the_cluster() {
    alerts_once(false);
}

/// n1 claims alerts and then drops the ones it won, as a node that died
/// between its claim and its outbox would: the others take those over
/// once the claims have been pending for three lease TTLs, and each alert
/// is still sent once.
#[test]
fn alerts_a_claimer_never_delivered_are_taken_over_and_sent_once() {
    alerts_once(true);
}

fn alerts_once(first_claimer_dies: bool) {
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let receiver = Receiver::start();
    let alerts = format!(
        r#"
[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "http://{}/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.rules]]
name = "key-budgets"
scope = "keys"
thresholds = [50]
channels = ["hook"]
"#,
        receiver.addr
    );
    let nodes: Vec<Gateway> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let dir = util::TempDir::new("cluster-node");
            let path = dir.0.join("bursar.toml");
            let config = format!("{}{alerts}", node_config(&mock, &redis, n, "0.0005"));
            std::fs::write(&path, config).unwrap();
            let drop_claims = first_claimer_dies && *n == "n1";
            Gateway::spawn_with(dir, path, &[], |cmd| {
                if drop_claims {
                    cmd.env("BURSAR_DEBUG_CLUSTER_CLAIM_DROP", "1");
                }
            })
        })
        .collect();
    // Load over all three until the budget is spent: every node sees the
    // cluster cross 50% and run out. With a dying claimer, all the load
    // is on it: it sees the crossings first and claims them, and the
    // others learn the cluster's spend from the spend feed alone.
    let addrs: Vec<_> = if first_claimer_dies {
        vec![nodes[0].addr]
    } else {
        nodes.iter().map(|g| g.addr).collect()
    };
    let load = Load::start_on(&addrs, 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes
        .iter()
        .map(|g| cluster_spent(g, "keys/search-prod"))
        .max()
        .unwrap_or(0)
        < pico("0.0004")
    {
        assert!(
            Instant::now() < deadline,
            "the load did not spend the budget"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (seen, _) = load.stop();
    assert!(seen <= pico("0.0005"));
    // A takeover waits for the claim's deadline (3 lease TTLs: 6 s here).
    let wait = |what: &str, kind: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while receiver.events(kind).is_empty() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the 50% alert", "budget.threshold_crossed");
    wait("the exhausted alert", "budget.exhausted");
    // Every node could have sent them; one did, once.
    std::thread::sleep(Duration::from_secs(2));
    let crossed = receiver.events("budget.threshold_crossed");
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert_eq!(crossed[0]["data"]["threshold_percent"], 50);
    assert_eq!(receiver.events("budget.exhausted").len(), 1);
    let claimed: Vec<u64> = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_alerts_claimed_total"))
        .collect();
    let taken_over: Vec<u64> = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_alerts_taken_over_total"))
        .collect();
    if first_claimer_dies {
        // What n1 won and dropped, the idle nodes took over, each once.
        assert_eq!(claimed[0], 2, "{claimed:?}");
        assert_eq!(taken_over[0], 0);
        assert_eq!(taken_over[1] + taken_over[2], 2, "{taken_over:?}");
        assert_eq!(claimed.iter().sum::<u64>(), 4);
        // An idle node's own books show the cluster's spend (its key
        // holder's usage view reads them).
        let cluster = cluster_spent(&nodes[2], "keys/search-prod");
        let mut c = Client::connect(nodes[2].addr);
        let auth = format!("Bearer {KEY}");
        let r = c.request("GET", "/v1/bursar/usage", &[("authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let spent = r.json()["budget"]["spent_usd"].as_str().map(pico);
        assert_eq!(spent, Some(cluster), "{}", r.text());
    } else {
        assert_eq!(claimed.iter().sum::<u64>(), 2);
        assert_eq!(taken_over.iter().sum::<u64>(), 0);
    }
}

/// Every node writes the request log to one PostgreSQL: the spend queries
/// and the request log on any node show every node's requests.
#[test]
fn every_node_logs_to_one_postgres_and_each_shows_the_whole_cluster() {
    let server = "postgres://postgres@127.0.0.1:5432";
    let name = format!("bursar_cluster_{}", std::process::id());
    let mut pg = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/ensure-postgres starts it)");
    let _ = pg.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    pg.batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let redis = Redis::start();
    let mock = Mock::start(&[]);
    let log = format!(
        "\n[log]\nsink = \"postgres\"\nurl = \"{server}/{name}\"\nflush_interval = \"50ms\"\n"
    );
    let nodes = start_nodes_with(&mock, &redis, "1", &log);
    let mut seen = 0;
    let per_node = 4;
    for g in &nodes {
        let mut c = Client::connect(g.addr);
        for _ in 0..per_node {
            let r = c.post("/v1/chat/completions", KEY, CHAT, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            seen += pico(r.cost_usd().unwrap());
        }
    }
    let requests = (per_node * nodes.len()) as u64;
    for g in &nodes {
        eventually("every node's rows in the log", || {
            let r = admin(g, "GET", "/admin/spend/totals?group_by=key", "");
            r.status == 200
                && r.json()["data"].as_array().is_some_and(|rows| {
                    rows.iter().any(|row| {
                        row["group"] == "search-prod"
                            && row["requests"].as_u64() == Some(requests)
                            && pico(row["cost_usd"].as_str().unwrap_or("0")) == seen
                    })
                })
        });
        let logs = admin(g, "GET", "/admin/logs?key=search-prod&limit=100", "").json();
        assert_eq!(
            logs["data"].as_array().unwrap().len() as u64,
            requests,
            "{logs}"
        );
    }
    drop(nodes);
    let _ = pg.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// `fail_mode = "open"`: while Redis is unreachable the nodes keep
/// admitting, granting themselves the leases they would have drawn (no
/// 402 for want of Redis), the operators hear of it, and when Redis returns
/// (empty) the nodes declare what they spent: no charge lost or counted
/// twice, and how far past the limit they went is reported.
#[test]
fn fail_open_keeps_serving_while_redis_is_away_and_reports_the_overshoot() {
    let mut redis = Redis::start();
    let mock = Mock::start(&[]);
    let receiver = Receiver::start();
    // ~1,400 requests: one client per node (a few hundred requests a
    // second each) stays under it on its own node, and the three together
    // pass it during the outage.
    let limit = "0.006";
    let extra = format!("{}\n", operational_alerts(&receiver));
    let nodes: Vec<Gateway> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let dir = util::TempDir::new("cluster-node");
            let path = dir.0.join("bursar.toml");
            let config = node_config(&mock, &redis, n, limit).replace(
                "lease_ttl = \"2s\"",
                "lease_ttl = \"2s\"\nfail_mode = \"open\"",
            );
            std::fs::write(&path, format!("{config}{extra}")).unwrap();
            Gateway::spawn_with(dir, path, &[], |cmd| {
                cmd.env("BURSAR_DEBUG_OPERATIONAL_INTERVAL_MS", "100");
            })
        })
        .collect();
    let load = Load::start(&nodes, 1);
    std::thread::sleep(Duration::from_millis(200));
    redis.kill();
    let refused = |nodes: &[Gateway]| -> u64 {
        nodes
            .iter()
            .map(|g| {
                util::per_worker(&g.metrics(), "bursar_budget_refused_total")
                    .iter()
                    .sum::<u64>()
            })
            .sum()
    };
    let refused_before = refused(&nodes);
    std::thread::sleep(Duration::from_millis(2500));
    let refused_during = refused(&nodes) - refused_before;
    let grants: u64 = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_fail_open_grants_total"))
        .sum();
    assert!(grants > 0, "no node granted itself a lease");
    assert_eq!(refused_during, 0, "refused while failing open");
    redis.restart();
    std::thread::sleep(Duration::from_millis(1000));
    let (seen, _) = load.stop();
    // The outage let the nodes past the limit, by design; no charge is
    // lost or counted twice, and Redis has every node's spend back.
    let per_node: Vec<i128> = nodes.iter().map(|g| spent(g, "keys/search-prod")).collect();
    assert!(
        seen > pico(limit),
        "{seen} (per node {per_node:?}): the outage's load did not pass the limit"
    );
    let books: i128 = nodes.iter().map(|g| spent(g, "keys/search-prod")).sum();
    assert_eq!(books, seen);
    eventually("Redis's contributions declared", || {
        redis_sums(&redis).0 == seen
    });
    let found: u64 = nodes
        .iter()
        .map(|g| counter(g, "bursar_cluster_over_limit_found_total"))
        .sum();
    assert!(found > 0, "the overshoot was not reported");
    eventually("the unreachable alert", || {
        receiver.count("operational.cluster_unavailable") > 0
    });
}
