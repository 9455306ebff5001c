//! A real etcd for the store tests (Debian etcd-server): one member on free ports of 127.0.0.1
//! with a data folder of its own, waited for until healthy, killed by pid when dropped (also
//! when the test fails) and its folder removed.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipshadow_control::EtcdStore;

/// How long etcd may take to become healthy (a slow, shared CI machine).
const START_WITHIN: Duration = Duration::from_secs(30);

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

/// A port the kernel says is free now (released for etcd to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts etcd for `test`; `None` (a skip) when etcd is not installed, a failure under
    /// `CI=true`.
    pub fn start(test: &str) -> Option<Self> {
        if !super::tools::require_tool(test, "etcd", "etcd-server") {
            return None;
        }
        let dir = tempfile::Builder::new().prefix(&format!("ipshadow-etcd-{test}-")).tempdir().unwrap();
        let mut etcd = Self { child: None, dir, client_port: free_port(), peer_port: free_port() };
        etcd.run();
        Some(etcd)
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The port etcd serves clients on.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// A store on this etcd, its keys under `key_prefix`.
    pub fn store(&self, key_prefix: &str) -> EtcdStore {
        EtcdStore::connect(&[self.endpoint()], key_prefix).unwrap()
    }

    /// Kills etcd (SIGKILL, by pid) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn run(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        while !self.healthy() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "etcd not healthy within {START_WITHIN:?}: {}", self.log());
            // Polling a condition: the next look at /health, not a wait for it.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/health` says so.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
