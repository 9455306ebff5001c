//! A packet generator and sink on AF_PACKET rings, for `bench/forward-vs-nftables.sh` (root).
//!
//! `pktgen send` writes Ethernet/IPv4/UDP frames into the transmit ring of an [`AfPacketPort`]
//! (one `send(2)` per 64 frames): a cycle of source ports makes many flows, each frame carries a
//! sequence number and its CLOCK_MONOTONIC send time in the payload, and its UDP checksum is
//! correct (updated per frame from a precomputed sum). Without `--rate` it sends as fast as it
//! can; with `--rate PPS` it paces frames (a busy wait) and hands each to the kernel at once. A
//! kick the kernel refuses (ENOBUFS: the receiver's backlog is full and drops the frame) is
//! counted and sending goes on. It stops after `--seconds` or `--count` frames, whichever comes
//! first. With `--random-sources PREFIX` each frame has a random source address in PREFIX and a
//! random (locally administered, unicast) source MAC, from a generator seeded by `--seed`, for
//! `bench/neighbour-flood.sh`. It prints one JSON object (frames sent, rate).
//!
//! `pktgen sink` counts the generator's frames, either from the receive rings of one or more
//! ports (`--port NS:IFACE`, repeat; one thread reads them all, sleeping 200 us when they are
//! empty) or, with `--udp PORT`, from a UDP
//! socket bound in each namespace (the socket wakes its reader per datagram; a ring hands frames
//! over a block at a time, which would add its own delay to a latency figure). It reports the
//! rate between the first and the last frame, frames per second, and one-way latency (receive
//! time minus the send time in the frame: same host, same clock). It stops when no frame came
//! for `--idle-ms` after the first one, or after `--timeout` seconds, and prints one JSON object.
//!
//! ```text
//! pktgen send --iface IF [--netns NS] --src-mac MAC --dst-mac MAC --src-ip IP --dst-ip IP
//!             [--dst-port 9] [--src-port 10000] [--flows 1024] [--size 64] [--rate PPS] [--seconds 5]
//!             [--send-buffer BYTES (default 64 MiB)] [--count N] [--random-sources PREFIX [--seed N]]
//! pktgen sink --port [NS:]IFACE ... | --udp PORT [--netns NS ...]   [--idle-ms 500] [--timeout 60]
//! ```

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use ipshadow_dataplane::{AfPacketPort, PacketPort, RingConfig, netns};

/// Marks a generator frame: the first payload bytes.
const MAGIC: [u8; 4] = *b"IPSG";
/// Ethernet (14) + IPv4 (20) + UDP (8).
const HEADERS: usize = 42;
/// Where the sequence number and the send time sit in the frame (after the magic).
const SEQ_AT: usize = HEADERS + 4;
const TIME_AT: usize = SEQ_AT + 8;
/// The smallest frame: headers, magic, sequence number, send time.
const MIN_FRAME: usize = TIME_AT + 8;
/// The largest frame: a 1,500-byte IP packet.
const MAX_FRAME: usize = 1514;

/// What the port does not offer: the monotonic clock's absolute value (`std::time::Instant`
/// hides it; it is comparable between processes on one host), and a larger send buffer.
mod sys {
    #![allow(unsafe_code)]

    use std::os::fd::AsRawFd;

    /// Sets the send buffer of `socket` to `bytes` (SO_SNDBUFFORCE: above the system's maximum;
    /// needs CAP_NET_ADMIN). A frame from a transmit ring holds its slot and counts against the
    /// send buffer until the receiving side frees it: with a receiver on another CPU, the
    /// default buffer (about 270 small frames) stops the generator long before the CPU does.
    pub fn set_send_buffer(socket: &impl AsRawFd, bytes: libc::c_int) -> std::io::Result<()> {
        set(socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
    }

    fn set(socket: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
        // SAFETY: `value` is a live c_int and the length passed is its size; the kernel only
        // reads it. The descriptor is borrowed from a live socket.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                core::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// CLOCK_MONOTONIC, in nanoseconds.
    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a live, writable timespec; clock_gettime writes only into it, and
        // CLOCK_MONOTONIC always exists on Linux (the return value is checked anyway).
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        if rc != 0 {
            return 0;
        }
        (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
    }
}
use sys::monotonic_ns;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        fail("usage: pktgen send|sink [OPTIONS] (see the file's documentation)");
    }
    let mode = args.remove(0);
    let options = Options::parse(args);
    let result = match mode.as_str() {
        "send" => send(&options),
        "sink" => sink(&options),
        other => fail(&format!("unknown mode {other:?}: send or sink")),
    };
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("pktgen: {message}");
    std::process::exit(1)
}

/// `--key value` pairs, in order (keys may repeat).
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(args: Vec<String>) -> Self {
        let mut pairs = Vec::new();
        let mut it = args.into_iter();
        while let Some(key) = it.next() {
            let Some(name) = key.strip_prefix("--") else { fail(&format!("expected --OPTION, got {key:?}")) };
            let Some(value) = it.next() else { fail(&format!("--{name} needs a value")) };
            pairs.push((name.to_owned(), value));
        }
        Self(pairs)
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).last().copied()
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("--{name} is required"))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: cannot read {v:?}")),
        }
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC {s:?}"))?;
    bytes.try_into().map_err(|_| format!("bad MAC {s:?}"))
}

/// One's-complement sum of big-endian 16-bit words (an odd last byte is padded with zero).
fn sum_words(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u64 = words.by_ref().map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The frame template and what changes per frame.
struct Template {
    frame: Vec<u8>,
    /// Checksum sum of the UDP pseudo-header, header and payload with the source port, the
    /// sequence number and the send time all zero, and without the source address (RFC 768).
    udp_base: u64,
}

impl Template {
    fn new(options: &Options) -> Result<Self, String> {
        let src_mac = parse_mac(options.required("src-mac")?)?;
        let dst_mac = parse_mac(options.required("dst-mac")?)?;
        let src_ip: Ipv4Addr = options.parsed("src-ip", Ipv4Addr::UNSPECIFIED)?;
        let dst_ip: Ipv4Addr = options.parsed("dst-ip", Ipv4Addr::UNSPECIFIED)?;
        if src_ip.is_unspecified() || dst_ip.is_unspecified() {
            return Err("--src-ip and --dst-ip are required".into());
        }
        let dst_port: u16 = options.parsed("dst-port", 9)?;
        let size: usize = options.parsed("size", 64)?;
        if !(MIN_FRAME..=MAX_FRAME).contains(&size) {
            return Err(format!("--size must be in {MIN_FRAME}..={MAX_FRAME}"));
        }
        let mut f = vec![0u8; size];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (size - 14) as u16;
        let udp_len = ip_len - 20;
        // IPv4: version 4, 20-byte header, don't fragment, TTL 64, UDP.
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[20] = 0x40;
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&src_ip.octets());
        f[30..34].copy_from_slice(&dst_ip.octets());
        let ip_sum = !fold(sum_words(&f[14..34]));
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[36..38].copy_from_slice(&dst_port.to_be_bytes());
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        f[HEADERS..HEADERS + 4].copy_from_slice(&MAGIC);
        let udp_base = sum_words(&f[30..34]) + 17 + u64::from(udp_len) + sum_words(&f[34..]);
        Ok(Self { frame: f, udp_base })
    }

    /// Sets the source MAC and address, and the IPv4 header checksum that covers the address.
    fn set_source(&mut self, mac: [u8; 6], ip: Ipv4Addr) {
        let f = &mut self.frame;
        f[6..12].copy_from_slice(&mac);
        f[26..30].copy_from_slice(&ip.octets());
        f[24..26].fill(0);
        let ip_sum = !fold(sum_words(&f[14..34]));
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    }

    /// Writes the per-frame fields and the UDP checksum.
    fn stamp(&mut self, src_port: u16, seq: u64, time: u64) {
        let f = &mut self.frame;
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
        f[TIME_AT..TIME_AT + 8].copy_from_slice(&time.to_be_bytes());
        let mut sum = self.udp_base + sum_words(&f[26..30]) + u64::from(src_port);
        for word in [seq, time] {
            sum += (word >> 48) + ((word >> 32) & 0xffff) + ((word >> 16) & 0xffff) + (word & 0xffff);
        }
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        let checksum = match !fold(sum) {
            0 => 0xffff,
            c => c,
        };
        f[40..42].copy_from_slice(&checksum.to_be_bytes());
    }
}

/// Random sources (`--random-sources`): addresses in a prefix, MACs locally administered.
struct RandomSources {
    network: u32,
    host_mask: u32,
    /// xorshift64* state (never zero): fast, and the same seed gives the same frames.
    state: u64,
}

impl RandomSources {
    fn new(prefix: &str, seed: u64) -> Result<Self, String> {
        let bad = || format!("--random-sources: {prefix:?} is not an IPv4 prefix (A.B.C.D/LEN)");
        let (ip, len) = prefix.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let host_mask = u32::MAX.checked_shr(len).unwrap_or(0);
        Ok(Self { network: u32::from(ip) & !host_mask, host_mask, state: seed.max(1) })
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A source MAC (unicast, locally administered) and address.
    fn source(&mut self) -> ([u8; 6], Ipv4Addr) {
        let r = self.next().to_be_bytes();
        let mac = [0x02, r[0], r[1], r[2], r[3], r[4]];
        let ip = Ipv4Addr::from(self.network | (self.next() as u32 & self.host_mask));
        (mac, ip)
    }
}

fn send(options: &Options) -> Result<String, String> {
    let iface = options.required("iface")?;
    if let Some(ns) = options.get("netns") {
        netns::enter(ns).map_err(|e| format!("entering namespace {ns}: {e}"))?;
    }
    let mut template = Template::new(options)?;
    let src_port: u16 = options.parsed("src-port", 10_000)?;
    let flows: u16 = options.parsed("flows", 1024)?;
    if flows == 0 || u32::from(src_port) + u32::from(flows) > 65_536 {
        return Err("--flows must be positive and --src-port + --flows at most 65536".into());
    }
    let rate: f64 = options.parsed("rate", 0.0)?;
    let seconds: f64 = options.parsed("seconds", 5.0)?;
    let count: u64 = options.parsed("count", u64::MAX)?;
    let mut random = match options.get("random-sources") {
        Some(prefix) => Some(RandomSources::new(prefix, options.parsed("seed", 1)?)?),
        None => None,
    };
    let mut port =
        AfPacketPort::open(iface, RingConfig::default()).map_err(|e| format!("opening a port on {iface}: {e}"))?;
    let send_buffer: libc::c_int = options.parsed("send-buffer", 64 << 20)?;
    sys::set_send_buffer(&port, send_buffer).map_err(|e| format!("SO_SNDBUFFORCE: {e}"))?;

    let interval = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    let start = monotonic_ns();
    let end = start + (seconds * 1e9) as u64;
    let mut seq: u64 = 0;
    let mut refused: u64 = 0;
    let mut rejected: u64 = 0;
    // A kick the kernel refused (ENOBUFS: the receiving side's backlog is full, the frame is
    // dropped there) is the offered load meeting a full receiver: counted, and sending goes on.
    let mut kick = |result: std::io::Result<()>| match result {
        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => rejected += 1,
        _ => {}
    };
    let mut now = start;
    while now < end && seq < count {
        if interval > 0.0 {
            let due = start + (seq as f64 * interval) as u64;
            if now < due {
                // Caught up: what is queued leaves now, then wait for the next frame's time.
                kick(port.flush());
                while monotonic_ns() < due {
                    std::hint::spin_loop();
                }
            }
        }
        now = monotonic_ns();
        if let Some(random) = random.as_mut() {
            let (mac, ip) = random.source();
            template.set_source(mac, ip);
        }
        template.stamp(src_port + (seq % u64::from(flows)) as u16, seq, now);
        match port.send(&template.frame) {
            Ok(()) => seq += 1,
            // The ring is full (the port asked the kernel to send it): try again shortly.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                refused += 1;
                std::thread::yield_now();
            }
            // Queued, and the kick that followed was refused.
            result @ Err(_) => {
                seq += 1;
                kick(result);
            }
        }
    }
    kick(port.flush());
    let secs = (monotonic_ns() - start) as f64 / 1e9;
    Ok(serde_json::json!({
        "mode": "send",
        "interface": iface,
        "frame_bytes": template.frame.len(),
        "flows": flows,
        "rate_limit_pps": rate,
        "random_sources": options.get("random-sources"),
        "sent": seq,
        "seconds": secs,
        "pps": seq as f64 / secs,
        "ring_full": refused,
        "kicks_refused": rejected,
    })
    .to_string())
}

/// What a sink saw (one thread's worth; merged at the end).
#[derive(Default)]
struct Tally {
    frames: u64,
    first_ns: u64,
    last_ns: u64,
    per_second: Vec<u64>,
    /// One-way latencies in nanoseconds (UDP mode only).
    latencies: Vec<u64>,
    max_seq: u64,
}

impl Tally {
    /// Counts one generator frame seen at `now` whose payload (after the UDP header) is `payload`.
    fn count(&mut self, payload: &[u8], now: u64, with_latency: bool) {
        if payload.len() < MIN_FRAME - HEADERS || payload[..4] != MAGIC {
            return;
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let (seq, sent) = (word(4), word(12));
        if self.frames == 0 {
            self.first_ns = now;
        }
        self.frames += 1;
        self.last_ns = now;
        self.max_seq = self.max_seq.max(seq);
        let second = ((now - self.first_ns) / 1_000_000_000) as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
        if with_latency {
            self.latencies.push(now.saturating_sub(sent));
        }
    }

    fn merge(mut self, other: Tally) -> Tally {
        if other.frames == 0 {
            return self;
        }
        if self.frames == 0 {
            return other;
        }
        // Per-second counts are re-based on the earlier first frame.
        let (base, shift_other) = if self.first_ns <= other.first_ns {
            (self.first_ns, ((other.first_ns - self.first_ns) / 1_000_000_000) as usize)
        } else {
            let shift = ((self.first_ns - other.first_ns) / 1_000_000_000) as usize;
            let mut shifted = vec![0; shift];
            shifted.extend_from_slice(&self.per_second);
            self.per_second = shifted;
            (other.first_ns, 0)
        };
        for (i, n) in other.per_second.iter().enumerate() {
            let at = i + shift_other;
            if self.per_second.len() <= at {
                self.per_second.resize(at + 1, 0);
            }
            self.per_second[at] += n;
        }
        self.first_ns = base;
        self.last_ns = self.last_ns.max(other.last_ns);
        self.frames += other.frames;
        self.max_seq = self.max_seq.max(other.max_seq);
        self.latencies.extend(other.latencies);
        self
    }
}

fn sink(options: &Options) -> Result<String, String> {
    let idle_ns = options.parsed::<u64>("idle-ms", 500)? * 1_000_000;
    let timeout_ns = (options.parsed::<f64>("timeout", 60.0)? * 1e9) as u64;
    let (tally, per_port) = match options.get("udp") {
        Some(port) => {
            let port: u16 = port.parse().map_err(|_| format!("--udp: bad port {port:?}"))?;
            let namespaces = options.all("netns");
            udp_sink(port, &namespaces, idle_ns, timeout_ns)?
        }
        None => ring_sink(&options.all("port"), idle_ns, timeout_ns)?,
    };
    let span = (tally.last_ns.saturating_sub(tally.first_ns)) as f64 / 1e9;
    let pps = if span > 0.0 { (tally.frames.saturating_sub(1)) as f64 / span } else { 0.0 };
    let mut latencies = tally.latencies;
    latencies.sort_unstable();
    let percentile = |p: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        Some(latencies[at] as f64 / 1000.0)
    };
    Ok(serde_json::json!({
        "mode": "sink",
        "frames": tally.frames,
        "per_port": per_port,
        "seconds": span,
        "pps": pps,
        "per_second": tally.per_second,
        "highest_seq": tally.max_seq,
        "latency_us": {
            "samples": latencies.len(),
            "p50": percentile(0.50),
            "p90": percentile(0.90),
            "p99": percentile(0.99),
            "p999": percentile(0.999),
            "max": latencies.last().map(|l| *l as f64 / 1000.0),
        },
    })
    .to_string())
}

/// Counts frames from the receive rings of `ports` (`NS:IFACE` or `IFACE`) in one thread.
fn ring_sink(ports: &[&str], idle_ns: u64, timeout_ns: u64) -> Result<(Tally, Vec<u64>), String> {
    if ports.is_empty() {
        return Err("give --port [NS:]IFACE (repeat) or --udp PORT".into());
    }
    let mut opened = Vec::new();
    for spec in ports {
        let (ns, iface) = spec.split_once(':').map_or((None, *spec), |(n, i)| (Some(n), i));
        if let Some(ns) = ns {
            netns::enter(ns).map_err(|e| format!("entering namespace {ns}: {e}"))?;
        }
        opened.push(AfPacketPort::open(iface, RingConfig::default()).map_err(|e| format!("opening {spec}: {e}"))?);
    }
    eprintln!("pktgen: sink ready");
    let mut tallies: Vec<Tally> = opened.iter().map(|_| Tally::default()).collect();
    let start = monotonic_ns();
    let mut received = 0;
    loop {
        if received == 0 {
            // Sleep rather than poll(2): a reader asleep in poll is woken for every frame (a
            // cross-CPU interrupt the sending side pays, here the forwarder); the ring holds
            // what arrives meanwhile.
            std::thread::sleep(Duration::from_micros(200));
        }
        let now = monotonic_ns();
        received = 0;
        for (port, tally) in opened.iter_mut().zip(tallies.iter_mut()) {
            received += port
                .receive(usize::MAX, &mut |frame| {
                    // The generator's frames only (ARP probes and the like pass by): IPv4, UDP.
                    if frame.len() >= MIN_FRAME && frame[12..14] == [0x08, 0x00] && frame[23] == 17 {
                        let ihl = usize::from(frame[14] & 0x0f) * 4;
                        if let Some(payload) = frame.get(14 + ihl + 8..) {
                            tally.count(payload, now, false);
                        }
                    }
                })
                .map_err(|e| format!("receive: {e}"))?;
        }
        let last = tallies.iter().map(|t| t.last_ns).max().unwrap_or(0);
        if (last > 0 && now.saturating_sub(last) > idle_ns) || now - start > timeout_ns {
            break;
        }
    }
    let per_port = tallies.iter().map(|t| t.frames).collect();
    Ok((tallies.into_iter().fold(Tally::default(), Tally::merge), per_port))
}

/// Counts datagrams to UDP `port` in each namespace (one thread and socket each) and records
/// their one-way latency.
fn udp_sink(port: u16, namespaces: &[&str], idle_ns: u64, timeout_ns: u64) -> Result<(Tally, Vec<u64>), String> {
    let namespaces: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.iter().map(|n| Some((*n).to_owned())).collect() };
    // Each thread reports the last frame time it saw, so all stop together once traffic ends.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let last_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = monotonic_ns();
    let mut threads = Vec::new();
    for ns in namespaces {
        let ready = ready_tx.clone();
        let last_seen = std::sync::Arc::clone(&last_seen);
        threads.push(std::thread::spawn(move || -> Result<Tally, String> {
            let socket = (|| {
                if let Some(ns) = &ns {
                    netns::enter(ns).map_err(|e| format!("entering namespace {ns}: {e}"))?;
                }
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("UDP {port}: {e}"))?;
                socket.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
                Ok::<_, String>(socket)
            })();
            let socket = match socket {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let mut tally = Tally::default();
            let mut buf = vec![0u8; 2048];
            loop {
                if let Ok(n) = socket.recv(&mut buf) {
                    let now = monotonic_ns();
                    tally.count(&buf[..n], now, true);
                    last_seen.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let now = monotonic_ns();
                let last = last_seen.load(std::sync::atomic::Ordering::Relaxed);
                if (last > 0 && now.saturating_sub(last) > idle_ns) || now - start > timeout_ns {
                    return Ok(tally);
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        ready_rx.recv().map_err(|_| "a sink thread ended early".to_owned())??;
    }
    eprintln!("pktgen: sink ready");
    let mut per_port = Vec::new();
    let mut total = Tally::default();
    for thread in threads {
        let tally = thread.join().map_err(|_| "a sink thread panicked".to_owned())??;
        per_port.push(tally.frames);
        total = total.merge(tally);
    }
    Ok((total, per_port))
}
