//! The cluster scripts' money arithmetic (`bursar::cluster::lua_money`) run
//! by a real `redis-server` (started here on a free port, with its own
//! directory and no persistence), against `Money`'s i128 arithmetic.

mod util;

use std::time::{Duration, Instant};

use util::redis::Redis;

use bursar::cluster::lua_money::{from_lua, to_lua, LUA_MONEY, LUA_MONEY_MAX};
use bursar::money::Money;

/// `op` of `a` and `b` computed by the helpers inside Redis: the sum, the
/// difference, the comparison and the larger, as strings.
fn lua(c: &mut redis::Connection, a: &str, b: &str) -> redis::RedisResult<Vec<String>> {
    let script = redis::Script::new(&format!(
        "{LUA_MONEY}
        local a = money_parse(ARGV[1])
        local b = money_parse(ARGV[2])
        local n = tonumber(ARGV[3])
        return {{money_str(money_add(a, b)), money_str(money_sub(a, b)),
                 tostring(money_cmp(a, b)), money_str(money_max(a, b)),
                 money_str(a), money_str(money_min(a, b)), money_str(money_div(a, n))}}"
    ));
    script.arg(a).arg(b).arg(divisor(b)).invoke(c)
}

/// The divisor the arithmetic test divides `a` by, from `b`: 1 to 8192
/// (`money_div`'s range), its ends included.
fn divisor(b: &str) -> u32 {
    let d: u32 = b.bytes().map(u32::from).sum();
    match d % 5 {
        0 => 1,
        1 => 8192,
        _ => d % 8192 + 1,
    }
}

fn pd(p: i128) -> Money {
    Money::from_picodollars(p).unwrap()
}

#[test]
fn lua_money_equals_i128_money_across_the_exact_range() {
    let redis = Redis::start();
    let mut c = redis.connect().unwrap();
    let max = LUA_MONEY_MAX.picodollars();
    let base = 1_000_000_000_000_i128;
    // The edges: zero, one picodollar, a dollar's boundary either side, 2^53
    // picodollars (where a double stops being exact), the range's ends.
    let mut values: Vec<i128> = vec![
        0,
        1,
        base - 1,
        base,
        base + 1,
        1 << 53,
        (1 << 53) + 1,
        max / 2,
        max / 2 + 1,
    ];
    let negated: Vec<i128> = values.iter().map(|v| -v).collect();
    values.extend(negated);
    // And random amounts of every size (a fixed-seed xorshift: reproducible).
    let mut x: u64 = 0x5eed_1234_abcd_ef01;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..400 {
        let digits = next() % 28 + 1;
        let mut v: i128 = 0;
        for _ in 0..digits {
            v = v * 10 + (next() % 10) as i128;
        }
        let v = v % (max / 2);
        values.push(if next() % 2 == 0 { v } else { -v });
    }
    let mut checked = 0;
    for (i, &a) in values.iter().enumerate() {
        let b = values[(i * 7 + 3) % values.len()];
        let (sa, sb) = (to_lua(pd(a)).unwrap(), to_lua(pd(b)).unwrap());
        let out = lua(&mut c, &sa, &sb).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
        assert_eq!(from_lua(&out[0]), Some(pd(a + b)), "{a} + {b}");
        assert_eq!(from_lua(&out[1]), Some(pd(a - b)), "{a} - {b}");
        assert_eq!(out[2], (a.cmp(&b) as i8).to_string(), "cmp {a} {b}");
        assert_eq!(from_lua(&out[3]), Some(pd(a.max(b))), "max {a} {b}");
        // The round trip keeps the canonical text (no leading zeros, no "-0").
        assert_eq!(out[4], sa, "parse and print {a}");
        assert_eq!(from_lua(&out[5]), Some(pd(a.min(b))), "min {a} {b}");
        // Division rounds down; a negative amount's share is zero.
        let n = i128::from(divisor(&sb));
        assert_eq!(from_lua(&out[6]), Some(pd(a.max(0) / n)), "{a} / {n}");
        checked += 1;
    }
    assert_eq!(checked, values.len());
}

#[test]
fn a_script_refuses_what_is_not_an_amount_or_leaves_the_exact_range() {
    let redis = Redis::start();
    let mut c = redis.connect().unwrap();
    let max = to_lua(LUA_MONEY_MAX).unwrap();
    // Past the range: an error from the script, never a rounded number.
    let err = lua(&mut c, &max, "1").unwrap_err();
    assert!(err.to_string().contains("exact range"), "{err}");
    for bad in [
        "",
        "1.5",
        "12e3",
        " 7",
        "--1",
        "0x10",
        "99999999999999999999999999999",
    ] {
        let err = lua(&mut c, bad, "1").unwrap_err();
        assert!(err.to_string().contains("bursar:"), "{bad:?}: {err}");
    }
    // The largest amount itself, and its negation, are exact.
    let out = lua(&mut c, &max, "0").unwrap();
    assert_eq!(
        (out[0].as_str(), out[1].as_str()),
        (max.as_str(), max.as_str())
    );
    let neg = format!("-{max}");
    let out = lua(&mut c, &neg, "0").unwrap();
    assert_eq!(
        (out[0].as_str(), out[4].as_str()),
        (neg.as_str(), neg.as_str())
    );
    let out = lua(&mut c, &max, &neg).unwrap_err();
    assert!(out.to_string().contains("exact range"), "{out}");
}

/// Every field of an entity's lease hash, summed by kind: (Σ c, Σ l, Σ h,
/// Σ o) in picodollars.
fn sums(c: &mut redis::Connection, key: &str) -> (i128, i128, i128, i128) {
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(c).unwrap();
    let mut out = (0, 0, 0, 0);
    for (name, v) in fields {
        let slot = match name.split_once(':').map(|(k, _)| k) {
            Some("c") => &mut out.0,
            Some("l") => &mut out.1,
            Some("h") => &mut out.2,
            Some("o") => &mut out.3,
            _ => continue,
        };
        *slot += from_lua(&v).unwrap().picodollars();
    }
    out
}

/// Three nodes draw, spend and push against one limit in a random order,
/// with leases that expire mid-way (a node keeps spending an expired lease
/// for requests already admitted, as a node cut off from Redis would until
/// they end): after every script `Σ c + Σ l + Σ h <= limit`, no push is an
/// overrun, a repeated push changes nothing, and at the end the pushed
/// contributions are exactly what the nodes spent.
#[test]
fn node_leases_never_let_the_nodes_spend_past_the_limit() {
    use bursar::cluster::scripts::{script, LUA_DRAW, LUA_PUSH, LUA_RELEASE};
    let redis = Redis::start();
    let mut c = redis.connect().unwrap();
    let draw = redis::Script::new(&script(LUA_DRAW));
    let push_script = redis::Script::new(&script(LUA_PUSH));
    let release_script = redis::Script::new(&script(LUA_RELEASE));
    let key = "bursar:{e1}:0";
    // A node's push: its whole spend as of its journal sequence.
    let push = |c: &mut redis::Connection, node: &str, spent: i128, seq: i64| {
        push_script
            .key(key)
            .arg(node)
            .arg(spent.to_string())
            .arg(seq)
            .invoke::<Vec<String>>(c)
            .unwrap()
    };
    // A node gives back `amount` it will not spend; what was released.
    let release = |c: &mut redis::Connection, node: &str, amount: i128| -> i128 {
        let out: Vec<String> = release_script
            .key(key)
            .arg(node)
            .arg(amount.to_string())
            .arg(-1)
            .invoke(c)
            .unwrap();
        assert!(out[0] == "ok", "{out:?}");
        from_lua(&out[1]).unwrap().picodollars()
    };
    let usd = 1_000_000_000_000_i128;
    let limit = 50 * usd + 7;
    redis::cmd("HSET")
        .arg(key)
        .arg("limit")
        .arg(limit.to_string())
        .query::<()>(&mut c)
        .unwrap();
    // Each node: its lease as the node sees it (usable until its deadline),
    // what it holds of expired leases (only in-flight requests spend it),
    // its spend, its journal sequence.
    #[derive(Default, Clone)]
    struct Node {
        lease: i128,
        expired: i128,
        deadline: Option<Instant>,
        spent: i128,
        seq: i64,
    }
    let names = ["n1", "n2", "n3"];
    let mut nodes = vec![Node::default(); 3];
    let mut x: u64 = 0x0dd_c0ffee;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let check = |c: &mut redis::Connection| {
        let (sc, sl, sh, so) = sums(c, key);
        assert!(sc + sl + sh <= limit, "{sc} + {sl} + {sh} > {limit}");
        assert_eq!(so, 0, "an overrun");
    };
    let mut granted_any = 0;
    let mut refused = 0;
    for _ in 0..400 {
        let i = rnd(3) as usize;
        let now = Instant::now();
        let n = &mut nodes[i];
        if n.deadline.is_some_and(|d| d <= now) {
            n.expired += n.lease;
            n.lease = 0;
            n.deadline = None;
        }
        match rnd(4) {
            0 => {
                // Draw: need up to $3, want up to $8; a short or a long TTL.
                let need = rnd(3 * usd as u64) as i128;
                let want = rnd(8 * usd as u64) as i128;
                let ttl: u64 = if rnd(4) == 0 { 3 } else { 60_000 };
                let sent = Instant::now();
                let out: Vec<String> = draw
                    .key(key)
                    .arg(names[i])
                    .arg(need.to_string())
                    .arg(want.to_string())
                    .arg(ttl)
                    .invoke(&mut c)
                    .unwrap();
                let g = from_lua(&out[0]).unwrap().picodollars();
                assert!(
                    g == 0 || (g >= need && g <= need.max(want)),
                    "{g} {need} {want}"
                );
                if g > 0 {
                    granted_any += 1;
                } else {
                    refused += 1;
                }
                n.lease += g;
                // The node's deadline is counted from before it sent the
                // draw, a margin inside Redis's expiry.
                n.deadline = Some(sent + Duration::from_millis(ttl.saturating_sub(2)));
            }
            1 | 2 => {
                // Spend: a request from the live lease, or one admitted
                // earlier finishing on an expired one.
                let from_expired = n.expired > 0 && rnd(2) == 0;
                let pool = if from_expired { n.expired } else { n.lease };
                if pool > 0 {
                    let amount = 1 + rnd(pool as u64) as i128;
                    let amount = amount.min(pool);
                    if from_expired {
                        n.expired -= amount;
                    } else {
                        n.lease -= amount;
                    }
                    n.spent += amount;
                    n.seq += 1;
                }
            }
            3 if rnd(2) == 0 => {
                // Release: what is left of expired leases once nothing
                // admitted on them still runs, or part of the live lease
                // (a refused node gives back what it cannot use).
                let amount = if n.expired > 0 {
                    std::mem::take(&mut n.expired)
                } else {
                    let part = rnd(n.lease as u64 + 1) as i128;
                    n.lease -= part;
                    part
                };
                let (_, bl, bh, _) = sums(&mut c, key);
                let released = release(&mut c, names[i], amount);
                let (_, al, ah, _) = sums(&mut c, key);
                // All of it (the node holds it in Redis), no more.
                assert_eq!(released, amount);
                assert_eq!(bl + bh - (al + ah), amount);
            }
            _ => {
                let out = push(&mut c, names[i], n.spent, n.seq);
                assert_eq!(out[4], "0", "overrun on {}", names[i]);
                // The same push again: stale, nothing changes.
                let before = sums(&mut c, key);
                let again = push(&mut c, names[i], n.spent, n.seq);
                assert!(again[0] == "stale" || n.seq == 0, "{again:?}");
                let (bc, bl, bh, _) = before;
                let (ac, al, ah, _) = sums(&mut c, key);
                assert_eq!(ac, bc);
                // (A repeat may still sweep an expiry: l moves to h.)
                assert_eq!(al + ah, bl + bh);
            }
        }
        check(&mut c);
        if rnd(10) == 0 {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
    // Every node pushes its final spend.
    for (i, n) in nodes.iter_mut().enumerate() {
        n.seq += 1;
        push(&mut c, names[i], n.spent, n.seq);
    }
    check(&mut c);
    let (sc, _, _, _) = sums(&mut c, key);
    let spent: i128 = nodes.iter().map(|n| n.spent).sum();
    assert_eq!(sc, spent);
    assert!(spent <= limit);
    // The run reached the limit: draws were refused, and most of it spent.
    assert!(granted_any > 10 && refused > 0, "{granted_any} {refused}");
    assert!(spent > limit / 2, "{spent}");
    // All of `need` or nothing: one picodollar more than is available gets
    // nothing; exactly what is available gets it all.
    let (sc, sl, sh, _) = sums(&mut c, key);
    let available = limit - sc - sl - sh;
    let mut draw_one = |need: i128, want: i128| -> i128 {
        let out: Vec<String> = draw
            .key(key)
            .arg("n4")
            .arg(need.to_string())
            .arg(want.to_string())
            .arg(60_000)
            .invoke(&mut c)
            .unwrap();
        from_lua(&out[0]).unwrap().picodollars()
    };
    assert_eq!(draw_one(available + 1, 0), 0);
    assert_eq!(draw_one(available, available + 5), available);
    assert_eq!(draw_one(1, 1), 0);
}

/// A hash that went back in time (here: deleted, as a restart without its
/// data or a flush would) is caught by the first node whose acknowledged
/// write is missing, and quarantined: no draw grants until the quarantine
/// ends, so a node that has not declared yet is not drawn past. Without
/// the quarantine, n1 could take what n2 spent before n2 declares it, and
/// the sum would pass the limit.
#[test]
fn a_hash_that_went_back_in_time_grants_nothing_until_its_quarantine_ends() {
    use bursar::cluster::scripts::{script, LUA_DRAW, LUA_PUSH};
    let redis = Redis::start();
    let mut c = redis.connect().unwrap();
    let draw = redis::Script::new(&script(LUA_DRAW));
    let push = redis::Script::new(&script(LUA_PUSH));
    let key = "bursar:{key:k}:0";
    let limit = "100";
    // draw(node, need, want, ttl, acked, hello) -> [granted, available, now, status, c, q]
    let draw_as = |c: &mut redis::Connection,
                   node: &str,
                   need: u64,
                   acked: i64,
                   hello: Option<(u64, u64, u64)>,
                   ttl: u64|
     -> Vec<String> {
        let mut inv = draw.key(key);
        inv.arg(node)
            .arg(need)
            .arg(need)
            .arg(ttl)
            .arg(limit)
            .arg(0)
            .arg(acked);
        if let Some((spent, seq, out)) = hello {
            inv.arg(spent).arg(seq).arg(out);
        }
        inv.invoke(c).unwrap()
    };
    // n1 and n2 each draw 40 and spend 30 of it, pushed at sequence 5.
    for node in ["n1", "n2"] {
        let out = draw_as(&mut c, node, 40, -1, Some((0, 1, 0)), 60_000);
        assert_eq!((out[0].as_str(), out[3].as_str()), ("40", "ok"), "{out:?}");
        let out: Vec<String> = push
            .key(key)
            .arg(node)
            .arg(30)
            .arg(5)
            .arg(limit)
            .arg(0)
            .arg(1)
            .arg(60_000)
            .invoke(&mut c)
            .unwrap();
        assert_eq!(out[0], "ok", "{out:?}");
    }
    // Redis loses the hash.
    redis::cmd("DEL").arg(key).query::<i64>(&mut c).unwrap();
    // n1 comes back first: its write acknowledged at 5 is gone. It is told
    // "lost" with what was stored (nothing), grants nothing, and its
    // declaration (spent 30, 10 outstanding) stands.
    let quarantine_ms = 400;
    let out = draw_as(&mut c, "n1", 5, 5, Some((30, 6, 10)), quarantine_ms);
    assert_eq!(out[3], "lost", "{out:?}");
    assert_eq!(
        (out[0].as_str(), out[4].as_str(), out[5].as_str()),
        ("0", "0", "-1")
    );
    // While quarantined, n1 cannot draw what n2 spent and has not declared.
    let out = draw_as(&mut c, "n1", 50, 6, None, quarantine_ms);
    assert_eq!(
        (out[0].as_str(), out[3].as_str()),
        ("0", "quarantine"),
        "{out:?}"
    );
    // A push of n2's on its old sequence is caught too (and changes nothing).
    let out: Vec<String> = push
        .key(key)
        .arg("n2")
        .arg(35)
        .arg(7)
        .arg(limit)
        .arg(0)
        .arg(5)
        .arg(quarantine_ms)
        .invoke(&mut c)
        .unwrap();
    assert_eq!(out[0], "lost", "{out:?}");
    // n2 declares; after the quarantine the sums are whole and the limit holds.
    let out = draw_as(&mut c, "n2", 0, -1, Some((35, 7, 5)), quarantine_ms);
    assert_eq!(out[3], "ok", "{out:?}");
    std::thread::sleep(Duration::from_millis(quarantine_ms + 50));
    let out = draw_as(&mut c, "n1", 21, 6, None, quarantine_ms);
    assert_eq!(
        (out[0].as_str(), out[3].as_str()),
        ("0", "refused"),
        "{out:?}"
    );
    let out = draw_as(&mut c, "n1", 20, 6, None, quarantine_ms);
    assert_eq!((out[0].as_str(), out[3].as_str()), ("20", "ok"), "{out:?}");
    let (sc, sl, sh, _) = sums(&mut c, key);
    assert_eq!(sc + sl + sh, 100, "{sc} {sl} {sh}");
}
