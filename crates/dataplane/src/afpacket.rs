//! An AF_PACKET port on one interface, both directions through rings mapped into our memory:
//! the kernel fills receive blocks that we read in place and hand back a block at a time; we
//! fill transmit slots and one `send(2)` asks the kernel to send every filled slot.

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
    /// Transmit slots (a multiple of 32; each holds one frame of up to 2,000 bytes).
    pub tx_frames: u32,
}

impl Default for RingConfig {
    /// 64 blocks of 256 KiB (16 MiB), retired after 1 ms: batches under load, low latency when idle.
    fn default() -> Self {
        Self { block_size: 256 << 10, block_count: 64, block_timeout_ms: 1, tx_frames: 4096 }
    }
}

/// Frame slot size inside a block (the kernel packs V3 frames tighter; this bounds the snap
/// length it will copy), and the size of a transmit slot.
const FRAME_SIZE: u32 = 2048;
/// Transmit slots per ring block (blocks of 64 KiB).
const TX_FRAMES_PER_BLOCK: u32 = 32;
/// Where a transmit slot's frame starts: after the aligned `tpacket3_hdr` (TPACKET3_HDRLEN minus
/// the sockaddr_ll the kernel reserves only on receive).
const TX_DATA_OFFSET: usize =
    (core::mem::size_of::<libc::tpacket3_hdr>() + libc::TPACKET_ALIGNMENT - 1) & !(libc::TPACKET_ALIGNMENT - 1);
/// Offset of `tp_status` in `tpacket3_hdr` (after tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len).
const TP_STATUS_OFFSET: usize = 20;
/// Filled slots after which `send` asks the kernel to transmit without waiting for `flush`.
const TX_KICK: u32 = 64;

/// Counters of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub received: u64,
    /// Frames sent.
    pub sent: u64,
    /// Frames not sent: the transmit ring was full or the frame too long (counted drops).
    pub send_errors: u64,
    /// Frames received longer than a ring slot (a sender's segmentation offload made them;
    /// turn it off on the senders) and dropped.
    pub oversize: u64,
    /// Frames whose TCP/UDP checksum the sender's kernel left unfinished (veth, tap) and this
    /// port completed.
    pub checksums_completed: u64,
}

/// An AF_PACKET socket bound to one interface, with its receive ring.
pub struct AfPacketPort {
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    block_size: usize,
    block_count: usize,
    next_block: usize,
    tx_frames: usize,
    next_tx: usize,
    tx_pending: u32,
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
        if config.tx_frames == 0 || !config.tx_frames.is_multiple_of(TX_FRAMES_PER_BLOCK) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "tx_frames must be a positive multiple of 32"));
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
        let tx_req = libc::tpacket_req3 {
            tp_block_size: FRAME_SIZE * TX_FRAMES_PER_BLOCK,
            tp_block_nr: config.tx_frames / TX_FRAMES_PER_BLOCK,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: config.tx_frames,
            tp_retire_blk_tov: 0,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &tx_req)?;
        let rx_len = config.block_size as usize * config.block_count as usize;
        // One mapping: the receive ring, then the transmit ring.
        let ring_len = rx_len + (FRAME_SIZE * config.tx_frames) as usize;
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
            tx_frames: config.tx_frames as usize,
            next_tx: 0,
            tx_pending: 0,
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

    /// Whether a received block is waiting to be read (no system call).
    pub fn ready(&self) -> bool {
        self.block_ready(self.next_block)
    }

    /// The block's status word, shared with the kernel.
    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: block < block_count, so the block descriptor lies inside the mapping, which is
        // page aligned (blocks are multiples of the page size); `block_status` is the first u32
        // of the header after `version` and `offset_to_priv` (offset 8), naturally aligned. The
        // kernel and we access it concurrently: hence an atomic.
        unsafe { &*self.ring.as_ptr().add(block * self.block_size + 8).cast::<AtomicU32>() }
    }

    /// The status word of transmit slot `slot`, shared with the kernel.
    fn tx_status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: slot < tx_frames, so the slot lies inside the transmit part of the mapping;
        // slots are 2048-byte aligned and tp_status is a naturally aligned u32 at offset 20.
        unsafe { &*self.tx_slot(slot).add(TP_STATUS_OFFSET).cast::<AtomicU32>() }
    }

    fn tx_slot(&self, slot: usize) -> *mut u8 {
        let rx_len = self.block_size * self.block_count;
        // SAFETY: in bounds of the mapping for slot < tx_frames (see `open`).
        unsafe { self.ring.as_ptr().add(rx_len + slot * FRAME_SIZE as usize) }
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
            // block_ready ordered the kernel's writes before our reads and writes; the mapping is
            // writable). The descriptor and every frame header are read within the block's
            // bounds, checked before each access; a frame is lent mutably only while no other
            // reference into the block exists.
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
                    if hdr.tp_len as usize > len {
                        // Cut at the slot size: forwarding it would send a truncated packet.
                        self.stats.oversize += 1;
                    } else if start + len <= self.block_size {
                        let bytes = core::slice::from_raw_parts_mut(base.add(start), len);
                        if hdr.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0
                            && crate::checksum::complete_l4_checksum(bytes)
                        {
                            self.stats.checksums_completed += 1;
                        }
                        frame(bytes);
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
        if frame.len() > FRAME_SIZE as usize - TX_DATA_OFFSET {
            self.stats.send_errors += 1;
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame longer than a transmit slot"));
        }
        let slot = self.next_tx;
        let status = self.tx_status(slot).load(Ordering::Acquire);
        if status != libc::TP_STATUS_AVAILABLE && status != libc::TP_STATUS_WRONG_FORMAT {
            // The ring is full of frames the kernel has not sent yet: ask it to, and drop this one.
            self.flush()?;
            self.stats.send_errors += 1;
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "transmit ring full"));
        }
        // SAFETY: the slot is ours while its status is AVAILABLE (the Acquire load above orders
        // the kernel's last use before our writes); the header and data lie inside the slot.
        unsafe {
            let base = self.tx_slot(slot);
            let hdr = &mut *base.cast::<libc::tpacket3_hdr>();
            hdr.tp_next_offset = 0;
            hdr.tp_len = frame.len() as u32;
            hdr.tp_snaplen = frame.len() as u32;
            core::ptr::copy_nonoverlapping(frame.as_ptr(), base.add(TX_DATA_OFFSET), frame.len());
        }
        self.tx_status(slot).store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.next_tx = (slot + 1) % self.tx_frames;
        self.tx_pending += 1;
        self.stats.sent += 1;
        if self.tx_pending >= TX_KICK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tx_pending == 0 {
            return Ok(());
        }
        self.tx_pending = 0;
        // SAFETY: a zero-length send with no buffer asks the kernel to transmit the filled slots.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), core::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // The kernel is still busy with earlier slots: they go out with the next kick.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl AsRawFd for AfPacketPort {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits up to `timeout_ms` until one of `ports` has frames (or returns at once if one has).
pub fn wait_any(ports: &[&AfPacketPort], timeout_ms: i32) -> io::Result<()> {
    if ports.iter().any(|p| p.ready()) {
        return Ok(());
    }
    let mut fds: Vec<libc::pollfd> = ports
        .iter()
        .map(|p| libc::pollfd { fd: p.fd.as_raw_fd(), events: libc::POLLIN | libc::POLLERR, revents: 0 })
        .collect();
    // SAFETY: `fds` is a live array of exactly `fds.len()` pollfd structures for the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // A signal (SIGTERM) interrupts the wait: the caller checks its stop flag.
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

impl Drop for AfPacketPort {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing borrows it past this point
        // (frames are only lent to callbacks during `receive`).
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.ring_len) };
    }
}
