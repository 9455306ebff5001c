//! Packets per second through a veth pair with two AF_PACKET ports (root): one thread sends
//! 64-byte frames through the transmit ring, another receives them through the receive ring.
//! Usage: `veth_pps [FRAMES]` (default 2,000,000). A first look at what the rings move on this
//! machine, before the forwarding benchmark.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ipshadow_dataplane::{AfPacketPort, PacketPort, RingConfig, netns};

fn sh(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(cmd).status().is_ok_and(|s| s.success())
}

fn main() -> std::io::Result<()> {
    let frames: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let ns = format!("ipdpps{}", std::process::id() % 100_000);
    if !sh(&format!(
        "ip netns add {ns} && ip -n {ns} link add pps0 type veth peer name pps1 && \
         ip -n {ns} link set pps0 up && ip -n {ns} link set pps1 up"
    )) {
        eprintln!("needs root: could not create namespace {ns}");
        sh(&format!("ip netns del {ns} 2>/dev/null"));
        std::process::exit(1);
    }
    let done = Arc::new(AtomicBool::new(false));
    let (ns_rx, done_rx) = (ns.clone(), done.clone());
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        netns::enter(&ns_rx)?;
        let mut rx = AfPacketPort::open("pps1", RingConfig::default())?;
        let mut got = 0u64;
        while !done_rx.load(Ordering::Relaxed) || rx.wait(0)? {
            rx.wait(10)?;
            rx.receive(usize::MAX, &mut |f| got += u64::from(f.len() >= 14 && f[12..14] == [0x88, 0xb5]))?;
        }
        Ok(got)
    });
    let ns_tx = ns.clone();
    let sender = std::thread::spawn(move || -> std::io::Result<(u64, u64, f64)> {
        netns::enter(&ns_tx)?;
        let mut tx = AfPacketPort::open("pps0", RingConfig::default())?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut frame = [0u8; 64];
        frame[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        let start = Instant::now();
        let mut dropped = 0;
        for n in 0..frames {
            frame[14..22].copy_from_slice(&n.to_be_bytes());
            if tx.send(&frame).is_err() {
                dropped += 1;
                std::thread::yield_now();
            }
        }
        tx.flush()?;
        Ok((frames - dropped, dropped, start.elapsed().as_secs_f64()))
    });
    let (sent, full, secs) = sender.join().expect("sender thread")?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    let got = receiver.join().expect("receiver thread")?;
    sh(&format!("ip netns del {ns}"));
    println!(
        "sent {sent} frames in {secs:.3} s = {:.0} pps ({full} refused: ring full); received {got} ({:.1} %)",
        sent as f64 / secs,
        100.0 * got as f64 / sent.max(1) as f64
    );
    Ok(())
}
