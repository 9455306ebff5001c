//! A smoltcp device backed by frame queues: the simulator moves frames between devices and links.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames waiting to be read by smoltcp (`rx`) and frames smoltcp sent (`tx`).
#[derive(Debug, Default)]
pub struct SimDevice {
    /// Frames for the stack.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames from the stack.
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl SimDevice {
    /// An Ethernet device with room for `mtu`-byte IP packets.
    pub fn new(mtu: usize) -> Self {
        Self { rx: VecDeque::new(), tx: VecDeque::new(), mtu }
    }
}

/// Hands one received frame to smoltcp.
pub struct RxToken(Vec<u8>);

/// Lets smoltcp write one frame into the device's transmit queue.
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::Device for SimDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps
    }
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}
