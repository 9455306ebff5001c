//! An AF_PACKET port on one interface, both directions through rings mapped into our memory
//! (TPACKET_V2: fixed slots of 2 KiB). The kernel fills receive slots that we read in place and
//! hand back one by one; we fill transmit slots and one `send(2)` asks the kernel to send every
//! filled slot.
//!
//! Why V2 and not V3: a V3 receive block reaches user space only when it is full or its timer
//! (at least one jiffy, 4 ms at HZ=250) expires, which added most of a millisecond to every
//! forwarded packet at moderate rates. A V2 slot is ours as soon as the kernel wrote it.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::PacketPort;

/// Sizes of the rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Receive slots (a multiple of 32; each holds one frame of up to 2,048 bytes with its
    /// header).
    pub rx_frames: u32,
    /// Transmit slots (a multiple of 32).
    pub tx_frames: u32,
}

impl Default for RingConfig {
    /// 8,192 receive slots (16 MiB: 12 ms of a 64-byte line at 700 kpps) and 4,096 transmit
    /// slots (8 MiB).
    fn default() -> Self {
        Self { rx_frames: 8192, tx_frames: 4096 }
    }
}

/// Slot size of both rings (the kernel copies at most what fits after the header).
const FRAME_SIZE: u32 = 2048;
/// Slots per ring block (blocks of 64 KiB, a multiple of the page size).
const FRAMES_PER_BLOCK: u32 = 32;
/// Where a transmit slot's frame starts: after the aligned `tpacket2_hdr` (TPACKET2_HDRLEN minus
/// the sockaddr_ll the kernel reserves only on receive).
const TX_DATA_OFFSET: usize =
    (core::mem::size_of::<libc::tpacket2_hdr>() + libc::TPACKET_ALIGNMENT - 1) & !(libc::TPACKET_ALIGNMENT - 1);
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

/// An AF_PACKET socket bound to one interface, with its receive and transmit rings.
pub struct AfPacketPort {
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    rx_frames: usize,
    next_rx: usize,
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

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_owned())
}

impl AfPacketPort {
    /// Opens a port on `interface` (needs CAP_NET_RAW). Frames this socket sends are not
    /// received back on it.
    pub fn open(interface: &str, config: RingConfig) -> io::Result<Self> {
        for (name, frames) in [("rx_frames", config.rx_frames), ("tx_frames", config.tx_frames)] {
            if frames == 0 || !frames.is_multiple_of(FRAMES_PER_BLOCK) {
                return Err(invalid(&format!("{name} must be a positive multiple of {FRAMES_PER_BLOCK}")));
            }
        }
        let name = CString::new(interface).map_err(|_| invalid("bad interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {interface}")));
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0: the socket takes no frame at all until `bind` below names the interface
        // and the protocol. Opened with ETH_P_ALL it would take every interface's frames into
        // its ring from this moment (a port set up while another interface is busy would then
        // forward, or learn a VM's MAC from, frames that never crossed its interface).
        // SAFETY: plain system call; a negative result is an error, anything else a new descriptor.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        check(raw)?;
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V2 as libc::c_int))?;
        // Our own transmissions would otherwise come back in the ring (kernel >= 4.20).
        let _ = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &(1 as libc::c_int));
        // A router's frames need no queueing discipline on the way out (kernel >= 3.14).
        let _ = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &(1 as libc::c_int));
        // Frames leave the transmit ring only while the socket's send buffer has room for their
        // buffers: the default (about 212 KB) holds some 90 of them, fewer than one ring's
        // worth, and a busy receiver makes the kick fail. Room for the whole ring (the forced
        // variant needs CAP_NET_ADMIN; without it the default stays).
        let room = (config.tx_frames as libc::c_int).saturating_mul(2 * FRAME_SIZE as libc::c_int);
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &room).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &room);
        }
        let ring_req = |frames: u32| libc::tpacket_req {
            tp_block_size: FRAME_SIZE * FRAMES_PER_BLOCK,
            tp_block_nr: frames / FRAMES_PER_BLOCK,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: frames,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &ring_req(config.rx_frames))?;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &ring_req(config.tx_frames))?;
        // One mapping: the receive ring, then the transmit ring.
        let ring_len = (FRAME_SIZE as usize) * (config.rx_frames as usize + config.tx_frames as usize);
        // SAFETY: maps the rings the kernel just allocated for this socket; length and descriptor
        // are the ones they were configured with. The mapping lives until Drop unmaps it.
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
            rx_frames: config.rx_frames as usize,
            next_rx: 0,
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
        if self.ready() {
            return Ok(true);
        }
        wait_any(&[self], &[], timeout_ms)?;
        Ok(self.ready())
    }

    /// Whether a received frame is waiting to be read (no system call).
    pub fn ready(&self) -> bool {
        self.status(self.rx_slot(self.next_rx)).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Slot `slot` of the receive ring. Slots of 2 KiB tile each 64 KiB block exactly, so a
    /// slot's offset is simply `slot * FRAME_SIZE`.
    fn rx_slot(&self, slot: usize) -> *mut u8 {
        debug_assert!(slot < self.rx_frames);
        // SAFETY: in bounds of the mapping for slot < rx_frames (see `open`).
        unsafe { self.ring.as_ptr().add(slot * FRAME_SIZE as usize) }
    }

    /// Slot `slot` of the transmit ring, after the receive ring.
    fn tx_slot(&self, slot: usize) -> *mut u8 {
        debug_assert!(slot < self.tx_frames);
        // SAFETY: in bounds of the mapping for slot < tx_frames (see `open`).
        unsafe { self.ring.as_ptr().add((self.rx_frames + slot) * FRAME_SIZE as usize) }
    }

    /// The status word of a slot (`tp_status`, the first field of `tpacket2_hdr`), shared with
    /// the kernel.
    fn status(&self, slot: *mut u8) -> &AtomicU32 {
        // SAFETY: `slot` points at a slot inside the mapping (rx_slot/tx_slot), 2 KiB aligned, so
        // its first u32 is valid and aligned; the kernel writes it concurrently: hence an atomic.
        unsafe { &*slot.cast::<AtomicU32>() }
    }
}

impl PacketPort for AfPacketPort {
    fn receive(&mut self, max: usize, frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let mut count = 0;
        while count < max {
            let slot = self.rx_slot(self.next_rx);
            let status = self.status(slot).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the slot is ours until we store TP_STATUS_KERNEL below (the Acquire load
            // ordered the kernel's writes before our reads and writes; the mapping is writable).
            // The header lies at the slot's start; the frame is used only if it lies inside the
            // slot, and it is lent mutably while no other reference into the slot exists.
            unsafe {
                let hdr = &*slot.cast::<libc::tpacket2_hdr>();
                let (start, len, wire_len) = (usize::from(hdr.tp_mac), hdr.tp_snaplen as usize, hdr.tp_len as usize);
                if wire_len > len {
                    // Cut at the slot size: forwarding it would send a truncated packet.
                    self.stats.oversize += 1;
                } else if start + len <= FRAME_SIZE as usize {
                    let bytes = core::slice::from_raw_parts_mut(slot.add(start), len);
                    if status & libc::TP_STATUS_CSUMNOTREADY != 0 && crate::checksum::complete_l4_checksum(bytes) {
                        self.stats.checksums_completed += 1;
                    }
                    frame(bytes);
                    count += 1;
                }
            }
            self.status(slot).store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next_rx = (self.next_rx + 1) % self.rx_frames;
        }
        self.stats.received += count as u64;
        Ok(count)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if frame.len() > FRAME_SIZE as usize - TX_DATA_OFFSET {
            self.stats.send_errors += 1;
            return Err(invalid("frame longer than a transmit slot"));
        }
        let slot = self.tx_slot(self.next_tx);
        let status = self.status(slot).load(Ordering::Acquire);
        if status != libc::TP_STATUS_AVAILABLE && status != libc::TP_STATUS_WRONG_FORMAT {
            // The ring is full of frames the kernel has not sent yet: ask it to, and drop this one.
            // Always a kick, even with nothing counted pending: a kick the kernel stopped early
            // (a veth whose peer's ring is full stops its queue, kernel 6.16 on) leaves its
            // later slots waiting, and only another kick sends them.
            self.tx_pending = self.tx_pending.max(1);
            self.flush()?;
            self.stats.send_errors += 1;
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "transmit ring full"));
        }
        // SAFETY: the slot is ours while its status is AVAILABLE (the Acquire load above orders
        // the kernel's last use before our writes); the header and data lie inside the slot.
        unsafe {
            let hdr = &mut *slot.cast::<libc::tpacket2_hdr>();
            hdr.tp_len = frame.len() as u32;
            hdr.tp_snaplen = frame.len() as u32;
            core::ptr::copy_nonoverlapping(frame.as_ptr(), slot.add(TX_DATA_OFFSET), frame.len());
        }
        self.status(slot).store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.next_tx = (self.next_tx + 1) % self.tx_frames;
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

/// Waits up to `timeout_ms` until one of `ports` has frames (or returns at once if one has), or
/// one of the `wake` descriptors is readable (a control thread's nudge: new desired state).
pub fn wait_any(ports: &[&AfPacketPort], wake: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<()> {
    if ports.iter().any(|p| p.ready()) {
        return Ok(());
    }
    let mut fds: Vec<libc::pollfd> = ports
        .iter()
        .map(|p| p.fd.as_raw_fd())
        .chain(wake.iter().map(AsRawFd::as_raw_fd))
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN | libc::POLLERR, revents: 0 })
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
