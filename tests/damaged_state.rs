//! Damaged state (issue 19, item 4): every file in a real gateway's state
//! directory, left by a SIGKILL under load, is truncated, zeroed or flipped
//! at seeded random offsets where it holds data, and the real binary is
//! started on each damaged copy. Each start must either refuse, naming the
//! file, or start with books equal to the undamaged directory's (every
//! durable charge intact); never start with money silently lost. `bursar
//! verify-state` on the same copy must agree: exit 1 exactly when the start
//! refuses.

mod util;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{Gateway, Mock, TempDir, CHAT, CHAT_STREAM};

const ADMIN: &str = "admin-secret-damage";

fn config(base_url: &str) -> String {
    util::proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[ledger]
snapshot_interval = "300ms"

[[customers]]
name = "acme"
budget = {{ limit_usd = "100", reset = "1M", calendar_aligned = true }}

[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "50", reset = "1d" }}

[[virtual_keys]]
name = "search-prod"
team = "search"
key = "sk-search-prod"
budget = {{ limit_usd = "10", reset = "1d" }}
"#
        ),
    )
}

/// The books a test compares: spend at each level the traffic touched.
const LEVELS: [&str; 4] = [
    "keys/search-prod",
    "teams/search",
    "customers/acme",
    "teams/ml",
];

fn books(gw: &Gateway) -> Vec<i128> {
    LEVELS
        .iter()
        .map(|l| util::spent_at(gw, ADMIN, l))
        .collect()
}

/// A fresh directory holding a copy of `state` and the config.
fn copy_of(state: &Path, config: &str) -> TempDir {
    let dir = TempDir::new("damaged");
    copy_dir(state, &dir.0.join("bursar-state"));
    std::fs::write(dir.0.join("bursar.toml"), config).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path, prefix: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = prefix.join(entry.file_name());
        if entry.path().is_dir() {
            files(&entry.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}

/// What `bursar verify-state` said.
struct Verdict {
    code: i32,
    text: String,
}

fn verify(dir: &TempDir) -> Verdict {
    let out = Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["verify-state", "--config", "bursar.toml"])
        .current_dir(&dir.0)
        .env("BURSAR_LOG", "error")
        .output()
        .unwrap();
    Verdict {
        code: out.status.code().unwrap_or(-1),
        text: String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr),
    }
}

enum Started {
    Up(Gateway),
    Refused(String),
}

/// Starts the real gateway on `dir`: up, or refused with its stderr.
fn start(dir: TempDir) -> Started {
    let config_path = dir.0.join("bursar.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir(&dir.0)
        .env("BURSAR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    if !line.starts_with("bursar listening on ") {
        let status = child.wait().unwrap();
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        assert!(!status.success(), "exited 0 without listening: {text}");
        return Started::Refused(text);
    }
    // Drain stderr so the gateway never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let words: Vec<&str> = line.split_whitespace().collect();
    Started::Up(Gateway {
        addr: words[3].parse().unwrap(),
        admin: words[5].parse().unwrap(),
        child,
        dir,
        config_path,
    })
}

/// A small deterministic generator (xorshift64*): the damage is the same on
/// every run, and a failure names the seed, file and offset to replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The file cut at this length.
    Truncate(usize),
    /// This many bytes zeroed from the offset.
    Zero(usize, usize),
    /// One bit flipped.
    Flip(usize, u8),
}

/// Applies `damage`; `false` when it changes nothing (zeros over zeros).
fn apply(path: &Path, damage: Damage) -> bool {
    let mut bytes = std::fs::read(path).unwrap();
    let before = bytes.clone();
    match damage {
        Damage::Truncate(len) => bytes.truncate(len),
        Damage::Zero(at, n) => {
            let end = (at + n).min(bytes.len());
            bytes[at..end].fill(0);
        }
        Damage::Flip(at, bit) => bytes[at] ^= 1 << bit,
    }
    std::fs::write(path, &bytes).unwrap();
    bytes != before
}

/// Damage aimed where the file holds data: offsets drawn among its
/// non-zero bytes (a 4 MiB ring is mostly zeros nothing reads).
fn damages(bytes: &[u8], rng: &mut Rng, per_kind: usize) -> Vec<Damage> {
    let data: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
    if data.is_empty() {
        return Vec::new();
    }
    let end = data[data.len() - 1] + 1;
    let mut out = Vec::new();
    for _ in 0..per_kind {
        out.push(Damage::Truncate(rng.below(end)));
        out.push(Damage::Zero(data[rng.below(data.len())], 1 + rng.below(64)));
        out.push(Damage::Flip(
            data[rng.below(data.len())],
            rng.below(8) as u8,
        ));
    }
    out
}

/// Whether a refusal names the damaged file (a ledger file may be named by
/// its directory: "the journal in .../ledger ends at ...").
fn names(stderr: &str, rel: &Path) -> bool {
    let name = rel.file_name().unwrap().to_string_lossy();
    stderr.contains(name.as_ref())
        || (rel.starts_with("ledger") && stderr.contains("ledger"))
        || stderr.contains("settle-ring")
}

/// Team "ml" through the admin API: governance.json exists and the team
/// (the registry's last entry) is in the books.
fn create_team_ml(gw: &Gateway) {
    let r = util::admin_request(
        gw,
        ADMIN,
        "POST",
        "/admin/teams",
        r#"{"name":"ml","customer":"acme","budget":{"limit_usd":"2","reset":"1M","calendar_aligned":true}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn every_damaged_state_file_is_repaired_or_refused_never_silently_lost() {
    let mock = Mock::start(&[]);
    let config = config(&mock.base_url());
    let mut gw = Gateway::start(&config, &[]);
    create_team_ml(&gw);
    // Load across several snapshots, then a SIGKILL mid-load: rings with
    // pending settles, a journal tail after the last snapshot.
    let load = util::LoadUntilCut::start(gw.addr, 6, "sk-search-prod", &[], |t| {
        if t % 2 == 0 {
            CHAT
        } else {
            CHAT_STREAM
        }
    });
    std::thread::sleep(Duration::from_millis(1200));
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let seen = load.stop();
    let pristine = gw.dir.0.join("bursar-state");

    // The undamaged directory: what every start must equal.
    let clean = copy_of(&pristine, &config);
    let verdict = verify(&clean);
    assert_eq!(verdict.code, 0, "{}", verdict.text);
    let expected = match start(clean) {
        Started::Up(gw) => books(&gw),
        Started::Refused(e) => panic!("the undamaged directory did not start: {e}"),
    };
    assert!(expected[0] >= seen && seen > 0, "{expected:?} {seen}");

    let mut all = Vec::new();
    files(&pristine, Path::new(""), &mut all);
    let mut rng = Rng(0x5eed_0019_d00d_2026);
    let (mut refused, mut intact, mut trials) = (0, 0, 0);
    let mut kinds_seen = std::collections::BTreeSet::new();
    for rel in &all {
        if rel == Path::new("lock") {
            continue;
        }
        let bytes = std::fs::read(pristine.join(rel)).unwrap();
        for damage in damages(&bytes, &mut rng, 2) {
            let dir = copy_of(&pristine, &config);
            let path = dir.0.join("bursar-state").join(rel);
            if !apply(&path, damage) {
                continue;
            }
            trials += 1;
            let what = format!("{} {damage:?}", rel.display());
            let verdict = verify(&dir);
            match start(dir) {
                Started::Refused(stderr) => {
                    refused += 1;
                    kinds_seen.insert(rel.display().to_string());
                    assert!(
                        names(&stderr, rel),
                        "{what}: refused without naming it: {stderr}"
                    );
                    assert_eq!(
                        verdict.code, 1,
                        "{what}: the start refused but verify-state passed it:\n{}\n{stderr}",
                        verdict.text
                    );
                }
                Started::Up(gw) => {
                    intact += 1;
                    assert_eq!(
                        books(&gw),
                        expected,
                        "{what}: started with different books (money silently lost or made)"
                    );
                    assert_eq!(
                        verdict.code, 0,
                        "{what}: the start kept the books but verify-state refused:\n{}",
                        verdict.text
                    );
                }
            }
        }
    }
    eprintln!(
        "damaged state: {trials} damages over {} files: {refused} refused naming the file, \
         {intact} started with the books intact; refusals in {kinds_seen:?}",
        all.len()
    );
    // The test exercised both outcomes and the money files.
    assert!(refused > 0 && intact > 0, "{refused} {intact}");
    assert!(
        kinds_seen.iter().any(|k| k.starts_with("ledger")),
        "{kinds_seen:?}"
    );
}

/// The damage the journal's own frames cannot show: its newest records
/// zeroed (they look like preallocated space) or the segment cut at a
/// record boundary. The rings' witness catches both.
#[test]
fn a_journal_that_lost_acknowledged_records_is_refused_by_the_rings_witness() {
    let mock = Mock::start(&[]);
    let config = config(&mock.base_url()).replace("\"300ms\"", "\"1h\"");
    let gw = Gateway::start(&config, &[]);
    let mut c = util::Client::connect(gw.addr);
    for _ in 0..20 {
        let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let gw = gw.stop_and_restart(&[]);
    // A clean stop checkpoints; the next records are only in the journal.
    let mut c = util::Client::connect(gw.addr);
    for _ in 0..10 {
        let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Durable and witnessed (the journal syncs every few ms).
    std::thread::sleep(Duration::from_millis(300));
    let mut gw = gw;
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let pristine = gw.dir.0.join("bursar-state");
    let ledger = pristine.join("ledger");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&ledger)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("journal-"))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap().clone();
    let rel = newest.strip_prefix(&pristine).unwrap().to_path_buf();
    let bytes = std::fs::read(&newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(end > 0);
    // Each frame starts with "BRJ1": cut at the last one, and zero from it.
    let last_frame = bytes[..end].windows(4).rposition(|w| w == b"BRJ1").unwrap();
    for damage in [
        Damage::Truncate(last_frame),
        Damage::Zero(last_frame, end - last_frame),
        Damage::Truncate(0),
        Damage::Zero(0, end),
    ] {
        let dir = copy_of(&pristine, &config);
        assert!(apply(&dir.0.join("bursar-state").join(&rel), damage));
        let verdict = verify(&dir);
        assert_eq!(verdict.code, 1, "{damage:?}: {}", verdict.text);
        assert!(
            verdict.text.contains("acknowledged charges are missing"),
            "{}",
            verdict.text
        );
        match start(dir) {
            Started::Refused(e) => {
                assert!(
                    e.contains("acknowledged charges are missing"),
                    "{damage:?}: {e}"
                );
                assert!(e.contains("verify-state"), "{e}");
            }
            Started::Up(gw) => panic!(
                "{damage:?}: started on a journal missing acknowledged records: {:?}",
                books(&gw)
            ),
        }
    }
    // Without the damage the same directory starts with every charge.
    let clean = copy_of(&pristine, &config);
    match start(clean) {
        Started::Up(gw) => assert_eq!(
            util::spent_at(&gw, ADMIN, "keys/search-prod"),
            30 * util::pico("0.0000042")
        ),
        Started::Refused(e) => panic!("{e}"),
    }
}

/// Targeted damage the random pass may not draw: a limit's digit flipped
/// in governance.json (valid JSON, another limit), the registry's last
/// entry cut (the books still hold its id), a ring's tail moved forward.
#[test]
fn damage_that_would_read_as_valid_data_is_refused() {
    let mock = Mock::start(&[]);
    let config = config(&mock.base_url());
    let gw = Gateway::start(&config, &[]);
    create_team_ml(&gw);
    let mut c = util::Client::connect(gw.addr);
    for _ in 0..5 {
        assert_eq!(
            c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[])
                .status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut gw = gw;
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let pristine = gw.dir.0.join("bursar-state");

    let refuse = |rel: &str, edit: &dyn Fn(&mut Vec<u8>), why: &str| {
        let dir = copy_of(&pristine, &config);
        let path = dir.0.join("bursar-state").join(rel);
        let mut bytes = std::fs::read(&path).unwrap();
        edit(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let verdict = verify(&dir);
        assert_eq!(verdict.code, 1, "{rel}: {}", verdict.text);
        assert!(verdict.text.contains(why), "{rel}: {}", verdict.text);
        match start(dir) {
            Started::Refused(e) => {
                assert!(e.contains(rel.rsplit('/').next().unwrap()), "{rel}: {e}");
                assert!(e.contains(why), "{rel}: {e}");
            }
            Started::Up(_) => panic!("{rel}: started on damage that reads as valid data"),
        }
    };
    // "2" → "3": one bit, still a valid limit.
    refuse(
        "governance.json",
        &|b| {
            let at = b.windows(13).position(|w| w == b"\"limit_usd\": ").unwrap() + 14;
            assert_eq!(b[at], b'2');
            b[at] ^= 1;
        },
        "checksum does not match",
    );
    // The last line (team "ml", in the books) cut at its start.
    refuse(
        "entities.log",
        &|b| {
            let last = b[..b.len() - 1].iter().rposition(|&c| c == b'\n').unwrap() + 1;
            b.truncate(last);
        },
        "lost",
    );
    // One bit of a key's name: "search-prod" becomes "search-prnd", which
    // would read as a new key with no spend (and the old one's id orphaned).
    refuse(
        "entities.log",
        &|b| {
            let at = b.windows(11).position(|w| w == b"search-prod").unwrap() + 9;
            b[at] ^= 1;
        },
        "checksum",
    );
    // A tail moved forward by one position (low bit of its value).
    refuse("settle-ring-0.bin", &|b| b[128] ^= 1, "tail word");
}

/// Not damage: a `governance.json` written by an older build whose alert
/// channel (defined through the API) uses `allow_private`, which this build
/// allows only to channels in the config file. The start refuses naming
/// the channel; `verify-state --config` says so too (REFUSED, exit 1) while
/// the files themselves are whole.
#[test]
fn an_overlay_that_no_longer_fits_the_config_is_refused_by_the_start_and_by_verify_state() {
    let mock = Mock::start(&[]);
    let config = config(&mock.base_url());
    let gw = Gateway::start(&config, &[]);
    let r = util::admin_request(
        &gw,
        ADMIN,
        "POST",
        "/admin/alerts/channels",
        r#"{"name":"hook","kind":"webhook","url":"https://example.com/h","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let gw = gw.stop_and_restart(&[]);
    let mut gw = gw;
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let dir = copy_of(&gw.dir.0.join("bursar-state"), &config);
    // As an older build wrote it: no checksum, the channel reaching loopback.
    let path = dir.0.join("bursar-state").join("governance.json");
    let mut overlay: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    overlay.as_object_mut().unwrap().remove("checksum");
    overlay["alert_channels"]["hook"]["allow_private"] = true.into();
    overlay["alert_channels"]["hook"]["url"] = "http://127.0.0.1:9/h".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&overlay).unwrap()).unwrap();
    let verdict = verify(&dir);
    assert_eq!(verdict.code, 1, "{}", verdict.text);
    assert!(
        verdict.text.contains("REFUSED") && verdict.text.contains("\"hook\""),
        "{}",
        verdict.text
    );
    assert!(!verdict.text.contains("DAMAGED"), "{}", verdict.text);
    match start(dir) {
        Started::Refused(e) => assert!(
            e.contains("\"hook\"") && e.contains("api_channels_allow_private"),
            "{e}"
        ),
        Started::Up(_) => panic!("started with an API channel that may not reach loopback"),
    }
}
