//! What the data plane's tests share: an in-memory port, and the fast path's topology ([`xdp`]).

pub mod xdp;

use std::collections::VecDeque;
use std::io;

use ipshadow_dataplane::PacketPort;

/// A port whose received frames the test queues and whose sent frames it reads.
#[derive(Default)]
pub struct MemPort {
    /// Frames to receive, in order.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames sent.
    pub tx: Vec<Vec<u8>>,
}

impl PacketPort for MemPort {
    fn receive(&mut self, max: usize, frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let mut n = 0;
        while n < max
            && let Some(f) = self.rx.pop_front()
        {
            frame(&f);
            n += 1;
        }
        Ok(n)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.tx.push(frame.to_vec());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
