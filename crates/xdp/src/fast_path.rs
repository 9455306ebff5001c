//! Loading the program, attaching it, and reading and writing its maps.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, DevMap, HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use thiserror::Error;

use crate::abi::{self, Config, FlowKey, Record, Stats};

const PROGRAM_NAME: &str = "ipshadow_fast_path";

/// The maps pinned in the pin directory, by name.
pub const PINNED: [&str; 2] = ["flows", "neighbours"];

/// Why the fast path could not be set up or used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FastPathError {
    /// This build carries no program (clang was missing when it was built).
    #[error("this build of ipshadow has no XDP program (clang was missing when it was built)")]
    NotBuilt,
    /// The kernel refused the program or its maps.
    #[error("loading the XDP program")]
    Load(#[source] aya::EbpfError),
    /// The program or a map is not in the object (a build of another version).
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("the XDP map {map}")]
    Map {
        /// The map.
        map: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The device map refused a port.
    #[error("the XDP device map")]
    DeviceMap(#[source] aya::maps::xdp::XdpMapError),
    /// Loading or running the program failed.
    #[error("the XDP program")]
    Program(#[source] ProgramError),
    /// The interface refused the program in driver mode.
    #[error("attaching XDP to {interface}")]
    Attach {
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// No such interface.
    #[error("no interface {0}")]
    NoInterface(String),
    /// More VM ports than the program has slots for.
    #[error("VM port {0} is beyond the program's {max} ports", max = abi::MAX_VM_PORTS)]
    TooManyPorts(u32),
    /// The pin directory could not be prepared.
    #[error("the bpffs directory {}", path.display())]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// How to load the program.
#[derive(Clone, Debug)]
pub struct FastPathSetup {
    /// Where the maps that hold state ([`PINNED`]) are pinned (a directory on a bpffs, made if
    /// missing; pinned maps found there are used), or `None` to pin nothing.
    pub pin_dir: Option<PathBuf>,
    /// Entries of the flow map (an LRU hash: when full, the least recently used flow goes).
    pub max_flows: u32,
}

/// What one `BPF_PROG_TEST_RUN` of the program gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// The action of a frame handed up.
pub const XDP_PASS: u32 = 2;
/// The action of a frame forwarded.
pub const XDP_REDIRECT: u32 = 4;

/// The program loaded, its maps open.
pub struct FastPath {
    ebpf: Ebpf,
    config: Array<MapData, [u8; abi::CONFIG_SIZE]>,
    ports: Array<MapData, [u8; 12]>,
    vm_ifindexes: HashMap<MapData, u32, u32>,
    tx_ports: DevMap<MapData>,
    shadows: HashMap<MapData, [u8; 4], [u8; 32]>,
    routes: HashMap<MapData, [u8; 4], [u8; 8]>,
    flows: HashMap<MapData, [u8; 16], [u8; abi::FLOW_SIZE]>,
    neighbours: HashMap<MapData, [u8; 4], [u8; 8]>,
    records: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    current: Config,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> FastPathError {
    move |source| FastPathError::Map { map, source }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError> {
    let map = ebpf.take_map(name).ok_or(FastPathError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// The index of a network interface, in the calling thread's network namespace.
#[allow(unsafe_code)]
pub fn ifindex(interface: &str) -> Result<u32, FastPathError> {
    let name = std::ffi::CString::new(interface).map_err(|_| FastPathError::NoInterface(interface.to_owned()))?;
    // SAFETY: if_nametoindex reads the NUL-terminated name, kept alive by `name` for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 { Err(FastPathError::NoInterface(interface.to_owned())) } else { Ok(index) }
}

impl FastPath {
    /// Loads the program and its maps (reusing the pinned ones in `setup.pin_dir`, if any).
    pub fn load(setup: &FastPathSetup) -> Result<Self, FastPathError> {
        if !crate::built() {
            return Err(FastPathError::NotBuilt);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries("flows", setup.max_flows.max(1));
        if let Some(dir) = &setup.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| FastPathError::PinDir { path: dir.clone(), source })?;
            // The state worth keeping across a restart: the flows and where clients are. The
            // rest the core writes again from its desired state.
            for map in PINNED {
                loader.map_pin_path(map, dir.join(map));
            }
        }
        let mut ebpf = loader.load(crate::PROGRAM).map_err(FastPathError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(FastPathError::Missing(PROGRAM_NAME))?
            .try_into()
            .map_err(FastPathError::Program)?;
        program.load().map_err(FastPathError::Program)?;
        let mut fast_path = Self {
            config: take(&mut ebpf, "config")?,
            ports: take(&mut ebpf, "ports")?,
            vm_ifindexes: take(&mut ebpf, "vm_ifindexes")?,
            tx_ports: take(&mut ebpf, "tx_ports")?,
            shadows: take(&mut ebpf, "shadows")?,
            routes: take(&mut ebpf, "routes")?,
            flows: take(&mut ebpf, "flows")?,
            neighbours: take(&mut ebpf, "neighbours")?,
            records: take(&mut ebpf, "records")?,
            stats: take(&mut ebpf, "stats")?,
            ebpf,
            current: Config { udp_batch_ns: abi::UDP_BATCH_NS, ..Config::default() },
        };
        fast_path.write_config()?;
        Ok(fast_path)
    }

    fn program(&mut self) -> Result<&mut Xdp, FastPathError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(FastPathError::Missing(PROGRAM_NAME))?
            .try_into()
            .map_err(FastPathError::Program)
    }

    /// Attaches the program to `interface` in driver mode (a generic-mode program would be
    /// slower than the AF_PACKET path it replaces). Detached when the fast path is dropped.
    pub fn attach(&mut self, interface: &str) -> Result<(), FastPathError> {
        let program = self.program()?;
        program
            .attach(interface, XdpMode::Driver)
            .map(drop)
            .map_err(|source| FastPathError::Attach { interface: interface.to_owned(), source })
    }

    fn write_config(&mut self) -> Result<(), FastPathError> {
        self.config.set(0, self.current.encode(), 0).map_err(map_err("config"))
    }

    /// The configuration the program runs with.
    pub fn config(&self) -> Config {
        self.current
    }

    /// Replaces the configuration (a no-op when unchanged).
    pub fn set_config(&mut self, config: Config) -> Result<(), FastPathError> {
        if config != self.current {
            self.current = config;
            self.write_config()?;
        }
        Ok(())
    }

    /// Sets the provider port: its interface is the device map's provider slot.
    pub fn set_provider(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        self.tx_ports.set(abi::PROVIDER_SLOT, ifindex, None, 0).map_err(FastPathError::DeviceMap)?;
        self.set_config(Config { provider_ifindex: ifindex, ..self.current })
    }

    /// Sets VM port `port`: its interface, and the VM's MAC (all zero while not known: frames
    /// to it go up).
    pub fn set_vm_port(&mut self, port: u32, ifindex: u32, mac: [u8; 6]) -> Result<(), FastPathError> {
        if port >= abi::MAX_VM_PORTS {
            return Err(FastPathError::TooManyPorts(port));
        }
        // The device map first: the program redirects only to a port it finds here.
        self.tx_ports.set(port, ifindex, None, 0).map_err(FastPathError::DeviceMap)?;
        self.vm_ifindexes.insert(ifindex, port, 0).map_err(map_err("vm_ifindexes"))?;
        self.ports.set(port, abi::port(ifindex, mac), 0).map_err(map_err("ports"))
    }

    /// Sets or replaces a shadowed address.
    pub fn set_shadow(&mut self, ip: Ipv4Addr, shadow: abi::Shadow) -> Result<(), FastPathError> {
        self.shadows.insert(abi::address(ip), shadow.encode(), 0).map_err(map_err("shadows"))
    }

    /// Removes a shadowed address (absent is fine).
    pub fn remove_shadow(&mut self, ip: Ipv4Addr) -> Result<(), FastPathError> {
        ignore_absent(self.shadows.remove(&abi::address(ip))).map_err(map_err("shadows"))
    }

    /// The shadowed addresses in the map.
    pub fn shadows(&self) -> Vec<(Ipv4Addr, abi::Shadow)> {
        self.shadows.iter().filter_map(Result::ok).map(|(k, v)| (Ipv4Addr::from(k), abi::Shadow::decode(&v))).collect()
    }

    /// Sets the VM port that holds `ip` alone.
    pub fn set_route(&mut self, ip: Ipv4Addr, port: u32) -> Result<(), FastPathError> {
        self.routes.insert(abi::address(ip), abi::route(port), 0).map_err(map_err("routes"))
    }

    /// Removes a routed address (absent is fine).
    pub fn remove_route(&mut self, ip: Ipv4Addr) -> Result<(), FastPathError> {
        ignore_absent(self.routes.remove(&abi::address(ip))).map_err(map_err("routes"))
    }

    /// The routed addresses in the map.
    pub fn routes(&self) -> Vec<Ipv4Addr> {
        self.routes.keys().filter_map(Result::ok).map(Ipv4Addr::from).collect()
    }

    /// Sets a flow's owner.
    pub fn set_flow(&mut self, key: &FlowKey, flow: abi::Flow) -> Result<(), FastPathError> {
        self.flows.insert(key.encode(), flow.encode(), 0).map_err(map_err("flows"))
    }

    /// Removes a flow (absent is fine).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), FastPathError> {
        ignore_absent(self.flows.remove(&key.encode())).map_err(map_err("flows"))
    }

    /// A flow, if in the map.
    pub fn flow(&self, key: &FlowKey) -> Option<abi::Flow> {
        self.flows.get(&key.encode(), 0).ok().map(|v| abi::Flow::decode(&v))
    }

    /// Every flow in the map (a restarted router refills its table from them).
    pub fn flows(&self) -> Vec<(FlowKey, abi::Flow)> {
        self.flows.iter().filter_map(Result::ok).map(|(k, v)| (FlowKey::decode(&k), abi::Flow::decode(&v))).collect()
    }

    /// Sets a neighbour's MAC on the provider side.
    pub fn set_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), FastPathError> {
        self.neighbours.insert(abi::address(ip), abi::neighbour(mac), 0).map_err(map_err("neighbours"))
    }

    /// A neighbour's MAC, if known.
    pub fn neighbour(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        let v = self.neighbours.get(&abi::address(ip), 0).ok()?;
        Some([v[0], v[1], v[2], v[3], v[4], v[5]])
    }

    /// Hands every waiting record to `each`, and returns how many there were.
    pub fn drain_records(&mut self, mut each: impl FnMut(Record)) -> usize {
        let mut n = 0;
        while let Some(item) = self.records.next() {
            if let Some(record) = Record::decode(&item) {
                each(record);
            }
            n += 1;
        }
        n
    }

    /// The records ring's descriptor: readable when records wait (for a poll loop).
    pub fn records_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.records.as_fd()
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Stats {
        let mut counters = [0u64; abi::STAT_COUNT as usize];
        for (i, c) in counters.iter_mut().enumerate() {
            if let Ok(values) = self.stats.get(&(i as u32), 0) {
                *c = values.iter().sum();
            }
        }
        Stats::from_counters(&counters)
    }

    /// Runs the program once on `frame` as if it arrived on `ingress_ifindex`
    /// (`BPF_PROG_TEST_RUN`): for tests; nothing is sent.
    pub fn test_run(&mut self, frame: &[u8], ingress_ifindex: u32) -> Result<TestRun, FastPathError> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel takes the frame from data_in and the interface from here.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let program = self.program()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let result = program.test_run(opts).map_err(FastPathError::Program)?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRun { action: result.return_value, frame: out })
    }
}

fn ignore_absent(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Whether `dir` is on a bpffs (where maps can be pinned).
pub fn is_bpffs(dir: &Path) -> bool {
    // statfs(2) without unsafe: /proc/self/mountinfo lists the mount point and its type.
    let Ok(dir) = dir.canonicalize() else { return false };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let fstype = fields.get(sep + 1).copied().unwrap_or("");
        if dir.starts_with(point) && best.is_none_or(|(len, _)| point.len() >= len) {
            best = Some((point.len(), fstype == "bpf"));
        }
    }
    best.is_some_and(|(_, bpf)| bpf)
}

/// The CPUs the kernel may run the program on (`/sys/devices/system/cpu/possible`; 1 if unknown):
/// the kernel's LRU hash keeps free entries aside per CPU.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n.clamp(1, u32::MAX as usize) as u32)
}

/// The kernel's monotonic clock in nanoseconds: the time base of `bpf_ktime_get_ns()`, in
/// which the records are stamped.
#[allow(unsafe_code)]
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}
