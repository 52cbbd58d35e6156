//! What systemd relies on: READY=1 on the notify socket once the listeners
//! are up (Type=notify), STOPPING=1 on SIGTERM, and a shipped example config
//! that `check-config` accepts (ExecStartPre).

mod util;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

#[test]
fn notifies_ready_after_listening_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("BURSAR_LOG", "warn")
        .current_dir(&dir.0)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    // READY means listening: a request succeeds at once (the built-in default).
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap());
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    drop(c);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).expect("a stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/bursar.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["check-config", "--config", path])
        .env("OPENAI_API_KEY", "sk-test")
        .env("BURSAR_ADMIN_TOKEN", "an-admin-token-for-tests")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
