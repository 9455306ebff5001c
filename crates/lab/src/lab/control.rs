//! The lab's control plane: `ipshadow serve` in the router's namespace (API, manager, DHCP
//! server and Shadow Router in one process, as a user runs it), the lab's inventory registered
//! through its API, and calls to that API from outside the namespace.
//!
//! The API listens on 127.0.0.1:7480 inside the router's namespace; a user reaches it with
//! `ip netns exec PREFIX-r ipshadow ...`. The lab's own calls are made from a thread that has
//! entered that namespace (setns(2) applies to the calling thread only).

use std::os::unix::fs::OpenOptionsExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::services::{Lab, alive, exe};
use super::{GATEWAY, MAC_A, MAC_B, X};

/// Where the API listens inside the router's namespace.
pub const API: &str = "127.0.0.1:7480";

/// The shortest deadline the lab's `serve` accepts, seconds: B's readiness allowance (10 s, the
/// default) and the default ramp at its shortest holds (4 x 1 s), which `serve` checks.
pub const MIN_DEADLINE_SECS: u64 = 15;

/// The lease time of the lab's DHCP server, seconds: a VM's DHCP client renews at half of it,
/// so A's lease ends 30-60 s after any moment (what a migration's deadline is by default).
pub const LEASE_SECS: u64 = 60;

/// The tenant the lab's VMs and address belong to.
pub const TENANT: &str = "lab";

impl Lab {
    /// The configuration of the lab's `serve`.
    fn serve_config(&self) -> String {
        let d = |f: &str| self.dir.join(f).display().to_string();
        format!(
            "listen = \"{API}\"\ndata_dir = \"{data}\"\n\n\
             # Short deadlines are what the demo shows; production keeps the default 30 s minimum.\n\
             [policy]\nmin_deadline_secs = {MIN_DEADLINE_SECS}\ndefault_deadline_secs = 60\nmax_deadline_secs = 86400\n\n\
             [router]\nprovider = \"prov\"\ngateway = \"{GATEWAY}\"\nstatus_file = \"{status}\"\nbpf_dir = \"{bpf}\"\ndata_path = \"{data_path}\"\n\
             vms = [{{ id = \"vm-a\", interface = \"vma\", mac = \"{MAC_A}\" }}, \
             {{ id = \"vm-b\", interface = \"vmb\", mac = \"{MAC_B}\" }}]\n\n\
             [dhcp]\nserver_id = \"{server_id}\"\nlease_store = \"leases.redb\"\n\n\
             [[dhcp.subnets]]\nnetwork = \"10.0.0.0\"\nprefix = 24\nrouters = [\"{GATEWAY}\"]\nlease_secs = {LEASE_SECS}\n",
            data = d("serve"),
            status = d("router/status.json"),
            bpf = d("bpf/r"),
            data_path = std::fs::read_to_string(self.dir.join("data-path"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "auto".to_owned()),
            // With a router group the DHCP server is on a host of its own, not the gateway.
            server_id = if self.routers() >= 2 { super::CONTROL_HOST } else { GATEWAY },
        )
    }

    /// The admin token of the lab's `serve` (made once per lab, kept in its data folder).
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.dir.join("serve/admin-token");
        if let Ok(token) = std::fs::read_to_string(&path) {
            return Ok(token.trim().to_owned());
        }
        std::fs::create_dir_all(self.dir.join("serve"))?;
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::File::options().write(true).create_new(true).mode(0o600).open(&path)?;
        std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
        Ok(token)
    }

    /// Writes the configuration of the lab's `serve` (and its admin token, made once).
    pub(super) fn write_serve_config(&self) -> anyhow::Result<()> {
        self.admin_token()?;
        let path = self.dir.join("serve.toml");
        std::fs::write(&path, self.serve_config()).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts `ipshadow serve` in the router's namespace; returns once its router reports and its
    /// API answers.
    pub fn start_serve(&self) -> anyhow::Result<u32> {
        self.write_serve_config()?;
        let config = self.dir.join("serve.toml").display().to_string();
        let pid = self.spawn(&self.ns("r"), "serve", &exe()?, &["serve", "--config", &config], None)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let router_up = self.router_status().is_some_and(|s| s.pid == pid);
            if router_up && self.api("GET", "/healthz", None).is_ok_and(|(code, _)| code == 200) {
                return Ok(pid);
            }
            if !alive(pid) || Instant::now() > deadline {
                bail!("ipshadow serve did not start; see {}", self.dir.join("serve.log").display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Registers the lab's VMs and VM A's address X through the API.
    pub fn register_inventory(&self) -> anyhow::Result<()> {
        for (id, mac, port) in [("vm-a", MAC_A, "vma"), ("vm-b", MAC_B, "vmb")] {
            let body = json!({ "id": id, "tenant": TENANT, "mac": mac, "segment": port });
            self.api_ok("POST", "/v1/vms", Some(body))?;
        }
        let body = json!({ "ip": X.to_string(), "tenant": TENANT, "vm": "vm-a" });
        self.api_ok("POST", "/v1/addresses", Some(body))?;
        Ok(())
    }

    /// Calls the lab's API with the admin token: the status code and the JSON body (`null` when
    /// the body is not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let token = self.admin_token()?;
        self.http(method, (&format!("http://{API}"), path), body, Some(token), Duration::from_secs(10))
    }

    /// An HTTP call from inside the router's namespace, without credentials, answered within
    /// one second (etcd's health and status: a member cut off must not hold the caller up).
    pub fn http_in_router_ns(&self, method: &str, url: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        self.http(method, (url, ""), body, None, Duration::from_secs(1))
    }

    /// One call with the product's client, from inside the router's namespace: sent once,
    /// whatever the status answered.
    fn http(
        &self,
        method: &str,
        (base, path): (&str, &str),
        body: Option<Value>,
        token: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<(u16, Value)> {
        self.in_router_ns(move || {
            let api = ipshadow_client::Api::new(base, token, None)?.with_timeout(timeout);
            let mut request = ipshadow_client::Request::new(method, path);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let reply = api.send(&request).with_context(|| format!("calling {base}{path}"))?;
            Ok((reply.status, reply.json().unwrap_or(Value::Null)))
        })
    }

    /// Runs `call` on a thread of its own that has entered the router's namespace (setns(2)
    /// applies to the calling thread only) and is gone after it.
    pub fn in_router_ns<T: Send>(&self, call: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let namespace = format!("/run/netns/{}", self.ns("r"));
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&namespace).with_context(|| format!("opening {namespace}"))?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
                    call()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the call's thread in the router's namespace panicked"))?
        })
    }

    /// Calls the API and fails unless it answers 2xx; returns the body.
    pub fn api_ok(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (code, value) = self.api(method, path, body)?;
        if !(200..300).contains(&code) {
            bail!("{method} {path}: {code} {}", value["message"].as_str().unwrap_or(&value.to_string()));
        }
        Ok(value)
    }
}
