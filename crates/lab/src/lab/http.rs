//! A real web server in each VM (`ipshadow lab up --http nginx`): Debian's nginx, as a user
//! would run it, serving one fixed file that names the VM that answered, with keep-alive long
//! enough that nginx itself closes no connection during a test (keepalive_timeout 300 s,
//! keepalive_requests 1,000,000). `ipshadow traffic http` is its client.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::X;
use super::services::{Lab, alive};

/// The web servers the lab can run in the VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpServer {
    /// nginx (Debian package nginx), HTTP/1.1 with keep-alive on port 80.
    Nginx,
}

/// TCP port of the web servers in the VMs.
pub const HTTP_PORT: u16 = 80;
/// The path of the file every VM serves.
pub const HTTP_PATH: &str = "/ipshadow.txt";
/// How long nginx keeps an idle keep-alive connection: longer than any lab test.
const KEEPALIVE_TIMEOUT_SECS: u32 = 300;
/// Requests per connection before nginx closes it: more than any lab test makes.
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// The body VM `vm` (`a` or `b`) serves: a line naming it, then filler so that a response
/// spans more than one segment's worth of header and body (about 1 KiB). Both VMs' bodies have
/// the same length; only the name differs.
pub fn body(vm: &str) -> String {
    let mut s = format!("ipshadow lab: served by vm-{vm}\n");
    for i in 0..20 {
        s += &format!("{i:02} the quick brown fox jumps over the lazy dog 0123456789\n");
    }
    s
}

impl Lab {
    /// VM `vm`'s web server folder (configuration, document root, logs, nginx's own pid file).
    pub fn http_dir(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("nginx-{vm}"))
    }

    /// The file VM `vm` serves at [`HTTP_PATH`] (the `--expect` of `ipshadow traffic http`).
    pub fn http_body_file(&self, vm: &str) -> PathBuf {
        self.http_dir(vm).join("www").join(HTTP_PATH.trim_start_matches('/'))
    }

    /// Starts the web server in both VMs; returns once each listens.
    pub fn start_http(&self, server: HttpServer) -> anyhow::Result<()> {
        match server {
            HttpServer::Nginx => {
                for vm in ["a", "b"] {
                    self.start_nginx(vm)?;
                }
            }
        }
        Ok(())
    }

    /// Whether a web server the lab started runs in both VMs.
    pub fn http_running(&self) -> bool {
        ["a", "b"].iter().all(|vm| self.pid(&format!("nginx-{vm}")).is_some_and(alive))
    }

    fn start_nginx(&self, vm: &str) -> anyhow::Result<()> {
        let dir = self.http_dir(vm);
        let file = self.http_body_file(vm);
        if let Some(www) = file.parent() {
            std::fs::create_dir_all(www).with_context(|| format!("creating {}", www.display()))?;
        }
        std::fs::write(&file, body(vm)).with_context(|| format!("writing {}", file.display()))?;
        // nginx makes its temporary folders, not their parent.
        std::fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.display()))?;
        let own_pid = dir.join("nginx.pid");
        let _ = std::fs::remove_file(&own_pid);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir)).with_context(|| format!("writing {}", conf.display()))?;
        let conf = conf.display().to_string();
        // In the foreground (`daemon off`) so that the lab holds the master's process id.
        let exe = Path::new("nginx");
        let name = format!("nginx-{vm}");
        let pid = self
            .spawn(&self.ns(vm), &name, exe, &["-c", &conf, "-g", "daemon off;"], None)
            .context("starting nginx (Debian package nginx)")?;
        // nginx writes its pid file once its listening sockets are open.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !own_pid.exists() {
            if !alive(pid) || Instant::now() > deadline {
                bail!(
                    "nginx in VM {vm} did not start; see {} and {}",
                    self.dir.join(format!("{name}.log")).display(),
                    dir.join("error.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The command line of the workload that fits the lab's web servers (for people).
    pub fn http_workload_hint(&self) -> String {
        format!(
            "ip netns exec {ns} ipshadow traffic http --target {X}:{HTTP_PORT} --path {HTTP_PATH} --expect vm-a={a} \
             --expect vm-b={b}",
            ns = self.ns("c1"),
            a = self.http_body_file("a").display(),
            b = self.http_body_file("b").display(),
        )
    }
}

/// nginx's configuration: everything under `dir` (no file of the host's nginx is read or
/// written), one worker, keep-alive longer than any lab run.
fn nginx_conf(dir: &Path) -> String {
    let d = |f: &str| dir.join(f).display().to_string();
    format!(
        "# Written by `ipshadow lab up --http nginx`.\n\
         worker_processes 1;\n\
         worker_rlimit_nofile 65536;\n\
         pid {pid};\n\
         error_log {error} warn;\n\
         user nobody nogroup;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \x20   access_log {access};\n\
         \x20   client_body_temp_path {tmp}/body;\n\
         \x20   proxy_temp_path {tmp}/proxy;\n\
         \x20   fastcgi_temp_path {tmp}/fastcgi;\n\
         \x20   uwsgi_temp_path {tmp}/uwsgi;\n\
         \x20   scgi_temp_path {tmp}/scgi;\n\
         \x20   default_type text/plain;\n\
         \x20   # nginx itself closes no connection during a lab run.\n\
         \x20   keepalive_timeout {KEEPALIVE_TIMEOUT_SECS}s;\n\
         \x20   keepalive_requests {KEEPALIVE_REQUESTS};\n\
         \x20   server {{\n\
         \x20       listen {HTTP_PORT} backlog=4096;\n\
         \x20       root {www};\n\
         \x20   }}\n\
         }}\n",
        pid = d("nginx.pid"),
        error = d("error.log"),
        access = d("access.log"),
        tmp = d("tmp"),
        www = d("www"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bodies_differ_only_in_the_name_and_have_one_length() {
        let (a, b) = (body("a"), body("b"));
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
        assert!(a.starts_with("ipshadow lab: served by vm-a\n") && a.len() > 1000);
        let conf = nginx_conf(Path::new("/run/ipshadow/t/nginx-a"));
        assert!(conf.contains("keepalive_timeout 300s;") && conf.contains("root /run/ipshadow/t/nginx-a/www;"));
    }
}
