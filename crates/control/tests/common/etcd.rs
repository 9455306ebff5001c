//! A real etcd for the store tests (Debian etcd-server): one member on free ports of 127.0.0.1
//! with a data folder of its own, waited for until healthy, killed by pid when dropped (also
//! when the test fails) and its folder removed; or a cluster of such members ([`EtcdCluster`]),
//! one of which can be killed and started again, its leader found through etcd's maintenance
//! status.

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
    name: String,
    /// `--initial-cluster`: every member's name and peer URL.
    initial_cluster: String,
}

/// Ports handed to etcd come from below the kernel's ephemeral range (32768 and up by
/// default), where no client's outgoing connection takes one between our check and etcd's
/// bind; a counter keeps the tests of this process from handing out one twice.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port free now (checked by binding it) and not handed out before by this process.
fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if *next == 0 {
        // Apart from another process running these tests at the same time, most likely.
        let seed = std::process::id() as u64 * 7919
            + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
        *next = PORTS.start + (seed % u64::from(PORTS.end - PORTS.start)) as u16;
    }
    loop {
        let port = *next;
        *next = if port + 1 >= PORTS.end { PORTS.start } else { port + 1 };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Etcd {
    /// Starts etcd for `test`; `None` (a skip) when etcd is not installed, a failure under
    /// `CI=true`.
    pub fn start(test: &str) -> Option<Self> {
        if !super::tools::require_tool(test, "etcd", "etcd-server") {
            return None;
        }
        let mut etcd = Self::member(test, "test");
        etcd.initial_cluster = format!("test={}", etcd.peer());
        etcd.run();
        Some(etcd)
    }

    /// A member not started yet, on ports of its own.
    fn member(test: &str, name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("ipshadow-etcd-{test}-{name}-")).tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        Self { child: None, dir, client_port, peer_port, name: name.to_owned(), initial_cluster: String::new() }
    }

    fn peer(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
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
        self.spawn();
        self.wait_healthy();
    }

    /// Starts the process (a cluster's members must all be started before any is healthy).
    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = self.peer();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-token", "ipshadow-test"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until `/health` says so (the member is in a cluster that has a leader).
    fn wait_healthy(&mut self) {
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

/// Members of one etcd cluster on 127.0.0.1, each with its own ports and data folder.
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `size` members for `test` and waits until each is healthy; `None` (a skip) when
    /// etcd is not installed, a failure under `CI=true`.
    pub fn start(test: &str, size: usize) -> Option<Self> {
        if !super::tools::require_tool(test, "etcd", "etcd-server") {
            return None;
        }
        let mut members: Vec<_> = (0..size).map(|i| Etcd::member(test, &format!("m{i}"))).collect();
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer())).collect::<Vec<_>>().join(",");
        for member in &mut members {
            member.initial_cluster = initial.clone();
            member.spawn();
        }
        for member in &mut members {
            member.wait_healthy();
        }
        Some(Self { members })
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i]
    }

    /// A store on every member (the client picks among them), its keys under `key_prefix`.
    pub fn store(&self, key_prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.endpoints(), key_prefix).unwrap()
    }

    /// Kills member `i` (SIGKILL, by pid).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].run();
    }

    /// The member that leads the cluster now (asked of each running member through etcd's
    /// maintenance status until one says it is the leader; within 30 s).
    pub fn leader(&self) -> usize {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let deadline = Instant::now() + START_WITHIN;
        loop {
            for (i, member) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
                let status = runtime.block_on(async {
                    let connect = etcd_client::Client::connect([member.endpoint()], None);
                    let mut client = tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok()?;
                    tokio::time::timeout(Duration::from_secs(2), client.status()).await.ok()?.ok()
                });
                if let Some(status) = status
                    && status.header().is_some_and(|h| h.member_id() == status.leader())
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no member leads within {START_WITHIN:?}");
            // Polling a condition: the next look at the members' status.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
