//! `ipshadow traffic` as the lab runs it, on loopback (no root): a server and a client verify
//! every byte; a peer that resets shows up as broken connections with their local addresses;
//! a bad request is reset and counted; SIGTERM ends both cleanly; bad options say one line.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process killed (by its own pid) when the test ends, passed or failed.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// SIGTERM, then the exit status (within 5 s).
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
            sleep(Duration::from_millis(20));
        }
    }
}

fn ipshadow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipshadow"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A path in the temp folder that no other test (or test run) uses.
fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ipshadow-traffic-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// `traffic serve` on a free loopback port, ready to accept.
fn start_server(status: &PathBuf) -> (Guard, u16) {
    let port = free_port();
    let child = ipshadow()
        .args(["traffic", "serve", "--listen", &format!("127.0.0.1:{port}"), "--status"])
        .arg(status)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start listening");
        sleep(Duration::from_millis(20));
    }
    (guard, port)
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The server's status file, once `ready` accepts it (within 5 s).
fn status_when(path: &PathBuf, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let status: Value = serde_json::from_str(&text).unwrap();
            if ready(&status) || Instant::now() > deadline {
                return status;
            }
        }
        assert!(Instant::now() < deadline, "no status file at {}", path.display());
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_and_run_verify_every_exchange_without_breaking_any() {
    let status = temp_path("serve-status.json");
    let report_file = temp_path("run-report.json");
    let progress = temp_path("run-progress.json");
    let (mut server, port) = start_server(&status);
    let output = ipshadow()
        .args(["traffic", "run", "--target", &format!("127.0.0.1:{port}"), "--long-lived", "50"])
        .args(["--lifetime", "1", "2", "--interval-ms", "200", "--churn", "20", "--duration", "4", "--json"])
        .args(["--client-id", "3", "--report"])
        .arg(&report_file)
        .arg("--progress")
        .arg(&progress)
        .output()
        .unwrap();
    let report = json(&output);
    assert_eq!(report["connections_broken"], 0, "{report}");
    assert!(report["connections_completed"].as_u64().unwrap() > 0, "{report}");
    assert!(report["by_kind"]["long_lived"]["total"].as_u64().unwrap() >= 50, "{report}");
    assert!(report["by_kind"]["churn"]["total"].as_u64().unwrap() > 40, "{report}");
    assert!(report["exchanges"].as_u64().unwrap() > 0, "{report}");
    assert!(report["bytes_verified"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["broken"], Value::Array(vec![]));
    let [total, completed, open] =
        ["connections_total", "connections_completed", "connections_open"].map(|k| report[k].as_u64().unwrap());
    assert_eq!(total, completed + open, "every connection ends exactly one way");
    // The long-lived connections were still open at the end, and the run says so.
    assert!(report["by_kind"]["long_lived"]["open"].as_u64().unwrap() > 0, "{report}");
    // The same report in the file, the progress file in its documented shape.
    let from_file: Value = serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(from_file, report);
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&progress).unwrap()).unwrap();
    assert_eq!(p["completed"], report["connections_completed"]);
    assert_eq!(p["exchanges"], report["exchanges"]);
    assert_eq!(p["closed_by_server"], report["connections_closed_by_server"]);
    assert!(p["elapsed_s"].as_f64().unwrap() > 3.0);
    // The server saw them all, and SIGTERM ends it with 0 and a last status.
    assert!(server.terminate().success());
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&status).unwrap()).unwrap();
    assert!(s["accepted"].as_u64().unwrap() >= total, "{s}");
    assert_eq!(s["corrupt"], 0);
    for path in [status, report_file, progress] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn a_peer_that_resets_breaks_connections_and_names_them() {
    // Reads the first request of each connection, then closes with SO_LINGER 0: an RST while
    // the client waits for its response.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    });
    let output = ipshadow()
        .args(["traffic", "run", "--target", &format!("127.0.0.1:{port}"), "--long-lived", "5"])
        .args(["--lifetime", "1", "2", "--interval-ms", "100", "--churn", "5", "--duration", "2", "--json"])
        .output()
        .unwrap();
    let report = json(&output);
    let broken = report["connections_broken"].as_u64().unwrap();
    assert!(broken > 0, "{report}");
    assert_eq!(report["causes"]["reset"].as_u64().unwrap(), broken, "{report}");
    let list = report["broken"].as_array().unwrap();
    assert_eq!(list.len() as u64, broken);
    for entry in list {
        assert_eq!(entry["cause"], "reset");
        let local = entry["local"].as_str().unwrap();
        assert!(local.starts_with("127.0.0.1:") && !local.ends_with(":0"), "{entry}");
        assert!(entry["at_s"].as_f64().unwrap() >= entry["started_s"].as_f64().unwrap());
        assert!(["long_lived", "churn"].contains(&entry["kind"].as_str().unwrap()));
    }
}

#[test]
fn an_orderly_close_by_the_server_at_an_idle_moment_breaks_nothing() {
    // Answers the first request of each connection, then closes in order (FIN) while the
    // client thinks, as the router's graceful end does in A's name: the client opens another.
    use ipshadow_sim::app::proto::{message_len, respond};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while message_len(&buf).is_none_or(|n| buf.len() < n) {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let Ok(response) = respond(&buf) else { return };
                let _ = stream.write_all(&response);
                let _ = stream.shutdown(std::net::Shutdown::Write);
                // Take in the client's close.
                while stream.read(&mut chunk).is_ok_and(|n| n > 0) {}
            });
        }
    });
    let output = ipshadow()
        .args(["traffic", "run", "--target", &format!("127.0.0.1:{port}"), "--long-lived", "5"])
        .args(["--lifetime", "30", "30", "--interval-ms", "200", "--churn", "0", "--duration", "2", "--json"])
        .output()
        .unwrap();
    let report = json(&output);
    let closed = report["connections_closed_by_server"].as_u64().unwrap();
    assert!(closed >= 5, "every connection was closed by the server at least once: {report}");
    assert_eq!(report["connections_broken"], 0, "{report}");
    assert!(report["exchanges"].as_u64().unwrap() >= closed, "each answered once before its close: {report}");
    assert!(report["connections_completed"].as_u64().unwrap() >= closed, "{report}");
}

#[test]
fn the_server_resets_a_bad_request_and_counts_it() {
    let status = temp_path("corrupt-status.json");
    let (mut server, port) = start_server(&status);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A request header whose payload is not the one it implies.
    let mut bad = vec![b'Q', 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 9];
    bad.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&bad).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => assert_eq!(n, 0, "no response to a bad request"),
    }
    let s = status_when(&status, |s| s["corrupt"] == 1);
    assert_eq!(s["corrupt"], 1, "{s}");
    assert!(server.terminate().success());
    let _ = std::fs::remove_file(status);
}

#[test]
fn sigterm_stops_a_run_and_it_still_reports() {
    let status = temp_path("sigterm-status.json");
    let (_server, port) = start_server(&status);
    let child = ipshadow()
        .args(["traffic", "run", "--target", &format!("127.0.0.1:{port}"), "--long-lived", "10"])
        .args(["--interval-ms", "100", "--duration", "60", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = Guard(child);
    // Stopped once its ten long-lived connections are open on the server.
    let s = status_when(&status, |s| s["open"] == 10);
    assert_eq!(s["open"], 10, "{s}");
    assert!(run.terminate().success());
    let mut stdout = String::new();
    run.0.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["connections_broken"], 0, "{report}");
    assert_eq!(report["by_kind"]["long_lived"]["open"], 10, "{report}");
    assert!(report["duration_s"].as_f64().unwrap() < 30.0);
    let _ = std::fs::remove_file(status);
}

#[test]
fn bad_options_are_refused_in_one_line() {
    let target = ["traffic", "run", "--target", "127.0.0.1:9"];
    let output = ipshadow().args(target).args(["--lifetime", "5", "2"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--lifetime"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing ran");
    // clap's own refusals: non-zero too, naming the option.
    for bad in [["--interval-ms", "0"], ["--churn", "nan"], ["--duration", "0"], ["--client-id", "256"]] {
        let output = ipshadow().args(target).args(bad).output().unwrap();
        assert!(!output.status.success(), "{bad:?} accepted");
        assert!(String::from_utf8_lossy(&output.stderr).contains(bad[0]), "{bad:?}");
    }
}

/// A keep-alive HTTP/1.1 server on loopback for `traffic http`: answers every `GET` with
/// `body`, and after `close_after` responses on a connection closes it in order (FIN), taking
/// in whatever the client still sends.
fn http_server(body: &'static [u8], close_after: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                for _ in 0..close_after {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let head = format!("HTTP/1.1 200 OK\r\nServer: test\r\nContent-Length: {}\r\n\r\n", body.len());
                    // One write, as a web server sends a small file.
                    if stream.write_all(&[head.as_bytes(), body].concat()).is_err() {
                        return;
                    }
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
                while stream.read(&mut chunk).is_ok_and(|n| n > 0) {}
            });
        }
    });
    port
}

fn http_run(port: u16, expect: &std::path::Path, extra: &[&str]) -> Value {
    let output = ipshadow()
        .args(["traffic", "http", "--target", &format!("127.0.0.1:{port}"), "--connections", "5"])
        .args(["--expect", &format!("srv={}", expect.display()), "--duration", "2", "--json"])
        .args(extra)
        .output()
        .unwrap();
    json(&output)
}

#[test]
fn http_reconnects_on_an_orderly_close_and_retries_a_request_that_crossed_it() {
    let body: &'static [u8] = b"served by srv\n";
    let expect = temp_path("http-body.txt");
    std::fs::write(&expect, body).unwrap();
    let port = http_server(body, 3);
    // With think time the server's FIN comes while the connection is idle: a reconnect.
    let r = http_run(port, &expect, &["--think", "50", "100"]);
    assert!(r["server_closes"].as_u64().unwrap() >= 5, "{r}");
    assert!(r["connects"].as_u64().unwrap() > 5, "{r}");
    // Closed loop: the next request crosses the FIN and is retried once on a new connection.
    let closed = http_run(port, &expect, &["--think", "0"]);
    assert!(closed["retried"].as_u64().unwrap() > 0, "{closed}");
    for r in [&r, &closed] {
        assert_eq!(r["failed"], 0, "{r}");
        let verified = r["responses_verified"].as_u64().unwrap();
        assert!(verified > 20, "{r}");
        assert_eq!(r["served_by"]["srv"].as_u64(), Some(verified), "{r}");
        assert_eq!(r["requests"].as_u64().unwrap(), verified + r["unfinished"].as_u64().unwrap(), "{r}");
    }
    let _ = std::fs::remove_file(&expect);
}

#[test]
fn http_counts_a_body_it_does_not_expect_as_a_bad_response() {
    let expect = temp_path("http-other-body.txt");
    std::fs::write(&expect, b"served by nobody\n").unwrap();
    let port = http_server(b"served by srv!\n", 1_000_000);
    let r = http_run(port, &expect, &["--think", "20", "40"]);
    let failed = r["requests_failed"].as_u64().unwrap();
    assert!(failed > 5, "{r}");
    assert_eq!(r["failures"]["bad_response"].as_u64(), Some(failed), "{r}");
    assert_eq!(r["responses_verified"], 0, "{r}");
    let _ = std::fs::remove_file(&expect);
}

#[test]
fn http_bad_options_are_refused_in_one_line() {
    let target = ["traffic", "http", "--target", "127.0.0.1:9"];
    for (bad, names) in [
        (&["--expect", "a=/etc/hostname", "--think", "5", "1"][..], "--think"),
        (&["--expect", "no-equals"], "--expect"),
        (&["--expect", "a=/nonexistent/ipshadow"], "--expect"),
        (&["--expect", "a=/etc/hostname", "--path", "no-slash"], "--path"),
        (&["--expect", "a=/etc/hostname", "--expect", "b=/etc/hostname"], "--expect"),
    ] {
        let output = ipshadow().args(target).args(bad).output().unwrap();
        assert!(!output.status.success(), "{bad:?} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(names) && !stderr.contains("panicked"), "{bad:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing ran");
    }
}
