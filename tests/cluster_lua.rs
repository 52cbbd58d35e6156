//! The cluster scripts' money arithmetic (`bursar::cluster::lua_money`) run
//! by a real `redis-server` (started here on a free port, with its own
//! directory and no persistence), against `Money`'s i128 arithmetic.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bursar::cluster::lua_money::{from_lua, to_lua, LUA_MONEY, LUA_MONEY_MAX};
use bursar::money::Money;

struct Redis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("bursar-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs Debian's redis-server)");
        let r = Redis { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.connect().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let mut c =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `op` of `a` and `b` computed by the helpers inside Redis: the sum, the
/// difference, the comparison and the larger, as strings.
fn lua(c: &mut redis::Connection, a: &str, b: &str) -> redis::RedisResult<Vec<String>> {
    let script = redis::Script::new(&format!(
        "{LUA_MONEY}
        local a = money_parse(ARGV[1])
        local b = money_parse(ARGV[2])
        return {{money_str(money_add(a, b)), money_str(money_sub(a, b)),
                 tostring(money_cmp(a, b)), money_str(money_max(a, b)),
                 money_str(a)}}"
    ));
    script.arg(a).arg(b).invoke(c)
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
