//! One `ipshadow dhcp` socket (0.0.0.0:67, no `interface` option) serving two VM segments, as in
//! the lab: the server's namespace has interfaces `vma` and `vmb`, each carrying the gateway
//! address 10.0.0.1/32 and leading to one VM. ISC dhclient in VM A and in VM B, run at the same
//! time, each get their reservation, because each broadcast reply leaves through the interface
//! its request came in on (IP_PKTINFO); a listener on UDP port 68 in each VM sees the replies
//! reaching that VM's segment: only ones for its own MAC. A unicast renewal (ciaddr set) is
//! answered too, although the server has no route to the VM's address.
//!
//! Needs root. With `CI=true` these tests fail rather than skip when they cannot run.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Netns, namespaces_available, sh, sh_any};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VMS: [Vm; 2] = [
    Vm { side: "a", iface: "vma", mac: [2, 0x78, 0, 0, 0, 0x0a], ip: Ipv4Addr::new(10, 0, 0, 10) },
    Vm { side: "b", iface: "vmb", mac: [2, 0x78, 0, 0, 0, 0x0b], ip: Ipv4Addr::new(10, 0, 0, 11) },
];
/// Tells the test binary, started again inside a VM's namespace, to be a helper (see
/// [`helper_in_a_vm_namespace`]).
const HELPER: &str = "IPSHADOW_DHCP_TEST_HELPER";
/// Not a DHCP message: the positive control of a listener that must see no reply.
const CONTROL: &[u8] = b"ipshadow-dhcp-control";

struct Vm {
    side: &'static str,
    /// The server-side interface leading to this VM.
    iface: &'static str,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

impl Vm {
    fn mac(&self) -> String {
        self.mac.map(|b| format!("{b:02x}")).join(":")
    }
}

/// The namespaces and every process the test started; all stopped on drop, passed or failed.
struct Lab {
    ns: Netns,
    srv: String,
    vms: [String; 2],
    server: Option<Child>,
    listeners: Vec<Child>,
}

impl Lab {
    fn new(tag: &str, default_route: bool) -> Self {
        let mut ns = Netns::new(tag);
        let srv = ns.add("s");
        let vms = [ns.add("a"), ns.add("b")];
        for (vm, name) in VMS.iter().zip(&vms) {
            // Only IPv4: nothing else may show up on the segments.
            sh(&format!(
                "ip -n {srv} link add {i} type veth peer name eth0 netns {name} && \
                 ip netns exec {srv} sysctl -qw net.ipv6.conf.{i}.disable_ipv6=1 && \
                 ip netns exec {name} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1 && \
                 ip -n {srv} addr add {SERVER}/32 dev {i} && ip -n {srv} link set {i} up && \
                 ip -n {name} link set eth0 address {mac} up",
                i = vm.iface,
                mac = vm.mac(),
            ));
            let hook = ns.path(&format!("hook-{}.sh", vm.side));
            std::fs::write(
                &hook,
                format!(
                    "#!/bin/sh\ncase \"$reason\" in\n  BOUND|RENEW|REBOOT|REBIND) ip addr replace \"$new_ip_address/24\" dev \"$interface\" ;;\nesac\n\
                     echo \"event=$reason ip=$new_ip_address\" >> {}\n",
                    ns.path(&format!("hook-{}.log", vm.side))
                ),
            )
            .unwrap();
            sh(&format!("chmod +x {hook}"));
        }
        if default_route {
            // A stray route: without IP_PKTINFO every broadcast reply would follow it to A.
            sh(&format!("ip -n {srv} route add default dev vma"));
        }
        std::fs::write(ns.path("dhclient.conf"), "timeout 10;\nretry 1;\ninitial-interval 1;\n").unwrap();
        Self { ns, srv, vms, server: None, listeners: Vec::new() }
    }

    fn start_server(&mut self) {
        let config = format!(
            "server_id = \"{SERVER}\"\nlease_store = \"{store}\"\n\
             [[subnets]]\nnetwork = \"10.0.0.0\"\nprefix = 24\nrouters = [\"{SERVER}\"]\nlease_secs = 600\n\
             [[reservations]]\nvm = \"vm-a\"\nmac = \"{mac_a}\"\nip = \"{ip_a}\"\n\
             [[reservations]]\nvm = \"vm-b\"\nmac = \"{mac_b}\"\nip = \"{ip_b}\"\n",
            store = self.ns.path("leases.redb"),
            mac_a = VMS[0].mac(),
            ip_a = VMS[0].ip,
            mac_b = VMS[1].mac(),
            ip_b = VMS[1].ip,
        );
        std::fs::write(self.ns.path("dhcp.toml"), config).unwrap();
        let events = std::fs::File::create(self.ns.path("events.jsonl")).unwrap();
        let log = std::fs::File::create(self.ns.path("server.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv, env!("CARGO_BIN_EXE_ipshadow"), "dhcp", "--config"])
            .arg(self.ns.path("dhcp.toml"))
            .stdout(events)
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        let start = Instant::now();
        while !self.server_log().contains("serving on") {
            assert!(start.elapsed() < Duration::from_secs(10), "server did not start: {}", self.server_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.ns.path("server.log")).unwrap_or_default()
    }

    /// Starts this test binary inside VM `vm`'s namespace as a helper; returns it running.
    fn helper(&self, vm: usize, task: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.vms[vm]])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "helper_in_a_vm_namespace", "--nocapture", "--test-threads=1"])
            .env(HELPER, task)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts a listener recording every datagram that reaches UDP port 68 in VM `vm`.
    fn listen(&mut self, vm: usize) {
        let out = self.ns.path(&format!("seen-{}.hex", VMS[vm].side));
        std::fs::write(&out, "").unwrap();
        let child = self.helper(vm, &format!("listen {out}"));
        self.listeners.push(child);
        let ready = format!("{out}.ready");
        let start = Instant::now();
        while !std::path::Path::new(&ready).exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "listener in VM {vm} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the listener in VM `vm` saw, one hex line a datagram.
    fn raw(&self, vm: usize) -> String {
        std::fs::read_to_string(self.ns.path(&format!("seen-{}.hex", VMS[vm].side))).unwrap()
    }

    /// Sends a datagram carrying [`CONTROL`] from the server's namespace, broadcast to UDP port
    /// 68 through the interface leading to `vm`.
    fn control_into(&self, vm: &Vm) {
        let (srv, iface) = (self.srv.clone(), vm.iface);
        std::thread::spawn(move || {
            ipshadow_dataplane::netns::enter(&srv).unwrap();
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_broadcast(true).unwrap();
            s.bind_device(Some(iface.as_bytes())).unwrap();
            let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
            s.send_to(CONTROL, &to.into()).unwrap();
        })
        .join()
        .unwrap();
    }

    /// The DHCP replies the listener in VM `vm` saw.
    fn seen(&self, vm: usize) -> Vec<Reply> {
        let text = std::fs::read_to_string(self.ns.path(&format!("seen-{}.hex", VMS[vm].side))).unwrap();
        text.lines().filter_map(|l| Reply::parse(&unhex(l))).collect()
    }

    /// Runs `dhclient -1` in VM `vm` and stops the daemon it leaves behind; returns its output.
    fn dhclient(&self, vm: usize) -> String {
        let side = VMS[vm].side;
        let pid_file = self.ns.path(&format!("dhclient-{side}.pid"));
        let out = sh_any(&format!(
            "ip netns exec {ns} dhclient -1 -v -cf {conf} -sf {hook} -pf {pid_file} -lf {leases} eth0",
            ns = self.vms[vm],
            conf = self.ns.path("dhclient.conf"),
            hook = self.ns.path(&format!("hook-{side}.sh")),
            leases = self.ns.path(&format!("dhclient-{side}.leases")),
        ));
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).output();
        }
        out
    }

    fn events(&self, kind: &str, vm: &str) -> usize {
        let text = std::fs::read_to_string(self.ns.path("events.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == kind && e["vm"] == vm)
            .count()
    }

    fn wait_events(&self, kind: &str, vm: &str) {
        let start = Instant::now();
        while self.events(kind, vm) == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "no {kind} event for {vm}: {}", self.server_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.listeners.iter_mut().chain(self.server.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A DHCP reply as seen on a segment.
#[derive(Debug)]
struct Reply {
    /// Option 53: 2 OFFER, 5 ACK, 6 NAK.
    kind: u8,
    chaddr: [u8; 6],
    yiaddr: Ipv4Addr,
}

impl Reply {
    fn parse(b: &[u8]) -> Option<Self> {
        // RFC 2131 2: op 2 is BOOTREPLY; the options follow the magic cookie at 236.
        if b.first() != Some(&2) || b.get(236..240) != Some(&[99, 130, 83, 99]) {
            return None;
        }
        let yiaddr = Ipv4Addr::from(<[u8; 4]>::try_from(b.get(16..20)?).ok()?);
        let chaddr = <[u8; 6]>::try_from(b.get(28..34)?).ok()?;
        let mut i = 240;
        while let Some(&code) = b.get(i) {
            match code {
                0 => i += 1,
                255 => break,
                53 => return Some(Self { kind: *b.get(i + 2)?, chaddr, yiaddr }),
                _ => i += 2 + usize::from(*b.get(i + 1)?),
            }
        }
        None
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// A DHCPREQUEST in RENEWING state (RFC 2131 4.3.2: ciaddr set, no server identifier, no
/// requested address), sent by unicast to the server.
fn renewal(vm: &Vm) -> Vec<u8> {
    let mut m = vec![0u8; 240];
    m[..4].copy_from_slice(&[1, 1, 6, 0]);
    m[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    m[12..16].copy_from_slice(&vm.ip.octets());
    m[28..34].copy_from_slice(&vm.mac);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, 3, 255]);
    m
}

fn reuse_socket(addr: SocketAddrV4) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    // dhclient's own socket on port 68 may be there too.
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::V4(addr).into()).unwrap();
    s.into()
}

/// Not a test on its own: the test binary runs this inside a VM's namespace (`ip netns exec`)
/// when [`HELPER`] is set; otherwise it returns at once.
///
/// - `listen FILE`: writes every datagram reaching UDP port 68 (broadcasts included) to FILE,
///   one hex line each, until killed.
/// - `renew FILE VM`: sends VM's renewal to the server by unicast and writes the reply to FILE.
#[test]
fn helper_in_a_vm_namespace() {
    let Ok(task) = std::env::var(HELPER) else { return };
    let args: Vec<&str> = task.split(' ').collect();
    let mut buf = [0u8; 1500];
    match args.as_slice() {
        ["listen", out] => {
            let socket = reuse_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
            std::fs::write(format!("{out}.ready"), "").unwrap();
            let mut file = std::fs::OpenOptions::new().append(true).open(out).unwrap();
            loop {
                let n = socket.recv(&mut buf).unwrap();
                writeln!(file, "{}", hex(&buf[..n])).unwrap();
            }
        }
        ["renew", out, vm] => {
            let vm = &VMS[vm.parse::<usize>().unwrap()];
            // Bound to the VM's address: the unicast reply comes here, not to the listener.
            let socket = reuse_socket(SocketAddrV4::new(vm.ip, 68));
            socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for _ in 0..3 {
                socket.send_to(&renewal(vm), SocketAddrV4::new(SERVER, 67)).unwrap();
                if let Ok(n) = socket.recv(&mut buf) {
                    std::fs::write(out, hex(&buf[..n])).unwrap();
                    return;
                }
            }
        }
        _ => panic!("unknown helper task {task:?}"),
    }
}

fn two_segments_story(tag: &str, default_route: bool) {
    if !namespaces_available(&format!("dhcp interfaces {tag}")) {
        return;
    }
    if !common::tools::require_tool(&format!("dhcp interfaces {tag}"), "dhclient", "isc-dhcp-client") {
        return;
    }
    let mut lab = Lab::new(tag, default_route);
    lab.start_server();
    lab.listen(0);
    lab.listen(1);

    // Both VMs ask at once: their requests may share a batch, each reply must find its segment.
    let outputs = std::thread::scope(|s| {
        let lab = &lab;
        let runs: Vec<_> = (0..2).map(|vm| s.spawn(move || lab.dhclient(vm))).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    for (vm, out) in VMS.iter().zip(&outputs) {
        assert!(out.contains(&format!("bound to {}", vm.ip)), "VM {} did not get {}: {out}", vm.side, vm.ip);
    }
    lab.wait_events("bound", "vm-a");
    lab.wait_events("bound", "vm-b");

    // What reached each segment: its own OFFER and ACK (the capture saw its segment's
    // replies), nothing meant for the other VM.
    for (i, vm) in VMS.iter().enumerate() {
        let seen = common::lab::wait_for(&format!("VM {}'s OFFER and ACK", vm.side), Duration::from_secs(5), |last| {
            let seen = lab.seen(i);
            *last = format!("{seen:?}");
            let kinds: Vec<u8> = seen.iter().map(|r| r.kind).collect();
            (kinds.contains(&2) && kinds.contains(&5)).then_some(seen)
        });
        let foreign: Vec<_> = seen.iter().filter(|r| r.chaddr != vm.mac).collect();
        assert!(foreign.is_empty(), "VM {}'s segment got replies for another VM: {foreign:?}", vm.side);
        assert!(seen.iter().all(|r| r.yiaddr == vm.ip), "VM {}: {seen:?}", vm.side);
    }

    // A renews by unicast (RENEWING). Without a route to 10.0.0.10 the server's unicast ACK
    // fails (ENETUNREACH) and goes out the interface the request came in on instead; with the
    // default route through `vma`, routing sends it there.
    let before = lab.seen(1).len();
    let out = lab.ns.path("renew-a.hex");
    let mut renew = lab.helper(0, &format!("renew {out} 0"));
    let status = renew.wait().unwrap();
    let reply = std::fs::read_to_string(&out).ok().and_then(|h| Reply::parse(&unhex(h.trim())));
    assert!(status.success(), "renew helper failed");
    let reply = reply.unwrap_or_else(|| panic!("no reply to A's unicast renewal: {}", lab.server_log()));
    assert_eq!((reply.kind, reply.chaddr, reply.yiaddr), (5, VMS[0].mac, VMS[0].ip));
    lab.wait_events("renewed", "vm-a");
    // After A's reply went out, a broadcast into B's segment: once B's listener has it, anything
    // of A's renewal that took B's segment would have reached it before.
    lab.control_into(&VMS[1]);
    common::lab::wait_for("the control datagram in B's segment", Duration::from_secs(5), |last| {
        *last = lab.raw(1);
        last.contains(&hex(CONTROL)).then_some(())
    });
    assert_eq!(lab.seen(1).len(), before, "B's segment saw A's renewal: {:?}", lab.seen(1));
}

#[test]
fn one_socket_answers_each_vm_through_the_interface_its_request_came_in_on() {
    two_segments_story("ipdi", false);
}

#[test]
fn a_default_route_does_not_pull_the_other_vms_replies_onto_its_interface() {
    two_segments_story("ipdj", true);
}
