//! An AF_PACKET port on one interface: receive through a TPACKET_V3 ring mapped into our
//! memory (the kernel fills blocks of frames; we read them in place and hand each block back),
//! send with `send(2)` on the same socket.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::PacketPort;

/// Geometry of the receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block (a multiple of the page size).
    pub block_size: u32,
    /// Blocks in the ring.
    pub block_count: u32,
    /// The kernel hands a partly filled block over after this many milliseconds.
    pub block_timeout_ms: u32,
}

impl Default for RingConfig {
    /// 64 blocks of 256 KiB (16 MiB), retired after 1 ms: batches under load, low latency when idle.
    fn default() -> Self {
        Self { block_size: 256 << 10, block_count: 64, block_timeout_ms: 1 }
    }
}

/// Frame slot size inside a block (the kernel packs V3 frames tighter; this bounds the snap
/// length it will copy).
const FRAME_SIZE: u32 = 2048;

/// Counters of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub received: u64,
    /// Frames sent.
    pub sent: u64,
    /// Frames the kernel could not send (counted, not retried: a dropped frame).
    pub send_errors: u64,
}

/// An AF_PACKET socket bound to one interface, with its receive ring.
pub struct AfPacketPort {
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    block_size: usize,
    block_count: usize,
    next_block: usize,
    stats: PortStats,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of exactly the length passed; the kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            core::mem::size_of::<T>() as libc::socklen_t,
        )
    })
}

impl AfPacketPort {
    /// Opens a port on `interface` (needs CAP_NET_RAW). Frames this socket sends are not
    /// received back on it.
    pub fn open(interface: &str, config: RingConfig) -> io::Result<Self> {
        let page = 4096u32;
        if config.block_size == 0 || !config.block_size.is_multiple_of(page) || config.block_size < FRAME_SIZE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block_size must be a positive multiple of 4096"));
        }
        if config.block_count == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block_count must be positive"));
        }
        let name =
            CString::new(interface).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {interface}")));
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain system call; a negative result is an error, anything else a new descriptor.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(protocol),
            )
        };
        check(raw)?;
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V3 as libc::c_int))?;
        // Our own transmissions would otherwise come back in the ring (kernel >= 4.20).
        let _ = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &(1 as libc::c_int));
        let req = libc::tpacket_req3 {
            tp_block_size: config.block_size,
            tp_block_nr: config.block_count,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: config.block_size / FRAME_SIZE * config.block_count,
            tp_retire_blk_tov: config.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let ring_len = config.block_size as usize * config.block_count as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket; length and descriptor
        // are the ones it was configured with. The mapping lives until Drop unmaps it.
        let ring = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = NonNull::new(ring.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let port = Self {
            fd,
            ring,
            ring_len,
            block_size: config.block_size as usize,
            block_count: config.block_count as usize,
            next_block: 0,
            stats: PortStats::default(),
        };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it a bind address.
        let mut addr: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a live sockaddr_ll and the length passed is its size.
        check(unsafe {
            libc::bind(
                port.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                core::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(port)
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// Waits up to `timeout_ms` for frames; returns whether some are ready.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        if self.block_ready(self.next_block) {
            return Ok(true);
        }
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN | libc::POLLERR, revents: 0 };
        // SAFETY: one live pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        check(rc)?;
        Ok(self.block_ready(self.next_block))
    }

    /// The block's status word, shared with the kernel.
    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: block < block_count, so the block descriptor lies inside the mapping, which is
        // page aligned (blocks are multiples of the page size); `block_status` is the first u32
        // of the header after `version` and `offset_to_priv` (offset 8), naturally aligned. The
        // kernel and we access it concurrently: hence an atomic.
        unsafe { &*self.ring.as_ptr().add(block * self.block_size + 8).cast::<AtomicU32>() }
    }

    fn block_ready(&self, block: usize) -> bool {
        self.block_status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }
}

impl PacketPort for AfPacketPort {
    fn receive(&mut self, max: usize, frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let mut count = 0;
        while count < max && self.block_ready(self.next_block) {
            let block = self.next_block;
            // SAFETY: the block is ours until we store TP_STATUS_KERNEL below (the Acquire load in
            // block_ready ordered the kernel's writes before our reads). The descriptor and every
            // frame header are read within the block's bounds, checked before each access.
            unsafe {
                let base = self.ring.as_ptr().add(block * self.block_size);
                let desc = &*base.cast::<libc::tpacket_block_desc>();
                let header = desc.hdr.bh1;
                let mut offset = header.offset_to_first_pkt as usize;
                for _ in 0..header.num_pkts {
                    if offset + core::mem::size_of::<libc::tpacket3_hdr>() > self.block_size {
                        break;
                    }
                    let hdr = &*base.add(offset).cast::<libc::tpacket3_hdr>();
                    let start = offset + hdr.tp_mac as usize;
                    let len = hdr.tp_snaplen as usize;
                    if start + len <= self.block_size {
                        frame(core::slice::from_raw_parts(base.add(start), len));
                        count += 1;
                    }
                    if hdr.tp_next_offset == 0 {
                        break;
                    }
                    offset += hdr.tp_next_offset as usize;
                }
            }
            self.block_status(block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next_block = (block + 1) % self.block_count;
        }
        self.stats.received += count as u64;
        Ok(count)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a live slice of the length passed; the kernel only reads it.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if rc < 0 {
            self.stats.send_errors += 1;
            return Err(io::Error::last_os_error());
        }
        self.stats.sent += 1;
        Ok(())
    }
}

impl Drop for AfPacketPort {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing borrows it past this point
        // (frames are only lent to callbacks during `receive`).
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.ring_len) };
    }
}
