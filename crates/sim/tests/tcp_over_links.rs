//! Two smoltcp hosts on a lossy simulated cable: real TCP (handshake, retransmission, windowing)
//! carries verified bytes both ways, in virtual time, identically for the same seeds.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use core::time::Duration;
use std::net::Ipv4Addr;

use ipshadow_core::Instant;
use ipshadow_sim::{Host, HostConfig, Link, LinkConfig};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

const BYTES: usize = 200_000;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) % 251) as u8
}

fn socket() -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16 * 1024]), tcp::SocketBuffer::new(vec![0; 16 * 1024]))
}

/// Runs an echo of BYTES bytes; returns (virtual time taken, frames lost, bytes verified).
fn run(seed: u64, loss: f64) -> (Duration, u64, usize) {
    let start = Instant::ZERO;
    let mut now = start;
    let host = |n: u8, seed| HostConfig {
        mac: [2, 0, 0, 0, 0, n],
        ip: Ipv4Addr::new(192, 0, 2, n),
        prefix: 24,
        gateway: None,
        seed,
    };
    let mut client = Host::new(host(1, seed), now);
    let mut server = Host::new(host(2, seed ^ 0xff), now);
    let cable = LinkConfig { latency: Duration::from_millis(2), jitter: Duration::from_micros(300), loss };
    let mut to_server = Link::new(cable, seed.wrapping_mul(3));
    let mut to_client = Link::new(cable, seed.wrapping_mul(5));
    let server_handle = server.sockets.add(socket());
    let client_handle = client.sockets.add(socket());
    server.sockets.get_mut::<tcp::Socket<'_>>(server_handle).listen(80).unwrap();
    client
        .sockets
        .get_mut::<tcp::Socket<'_>>(client_handle)
        .connect(client.iface.context(), IpEndpoint::new(IpAddress::v4(192, 0, 2, 2), 80), 40_000)
        .unwrap();
    let (mut sent, mut received, mut echoed) = (0usize, 0usize, 0usize);
    for _ in 0..2_000_000 {
        client.poll(now);
        server.poll(now);
        // The application on each side.
        let c = client.sockets.get_mut::<tcp::Socket<'_>>(client_handle);
        if c.can_send() && sent < BYTES {
            sent += c
                .send(|buf| {
                    let n = buf.len().min(BYTES - sent);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern(sent + i);
                    }
                    (n, n)
                })
                .unwrap();
        }
        if c.can_recv() {
            received += c
                .recv(|buf| {
                    for (i, b) in buf.iter().enumerate() {
                        assert_eq!(*b, pattern(received + i), "byte {} corrupted", received + i);
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
        }
        let s = server.sockets.get_mut::<tcp::Socket<'_>>(server_handle);
        if s.can_recv() && s.can_send() {
            // Take no more than the send buffer can hold, so nothing read is ever dropped.
            let room = s.send_capacity() - s.send_queue();
            let data = s
                .recv(|buf| {
                    let n = buf.len().min(room);
                    (n, buf[..n].to_vec())
                })
                .unwrap();
            echoed += s.send_slice(&data).unwrap();
        }
        if received == BYTES {
            break;
        }
        client.poll(now);
        server.poll(now);
        while let Some(f) = client.device.tx.pop_front() {
            to_server.send(f, now);
        }
        while let Some(f) = server.device.tx.pop_front() {
            to_client.send(f, now);
        }
        while let Some(f) = to_server.receive(now) {
            server.device.rx.push_back(f);
        }
        while let Some(f) = to_client.receive(now) {
            client.device.rx.push_back(f);
        }
        if !client.device.rx.is_empty() || !server.device.rx.is_empty() {
            continue; // deliver at the same instant
        }
        // Jump to the next event.
        let next = [client.poll_at(now), server.poll_at(now), to_server.next_arrival(), to_client.next_arrival()]
            .into_iter()
            .flatten()
            .min()
            .expect("something is always pending until the echo completes");
        now = next.max(now + Duration::from_micros(1));
    }
    assert_eq!(echoed, BYTES);
    (now - start, to_server.stats().1 + to_client.stats().1, received)
}

#[test]
fn echo_over_a_clean_cable() {
    let (took, lost, verified) = run(1, 0.0);
    assert_eq!((lost, verified), (0, BYTES));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn echo_survives_loss_through_retransmission() {
    let (took, lost, verified) = run(2, 0.02);
    assert!(lost > 0, "the cable dropped frames");
    assert_eq!(verified, BYTES, "every byte arrived, in order, intact");
    println!("2 % loss: {lost} frames lost, echo of {BYTES} bytes took {took:?} of virtual time");
}

#[test]
fn same_seed_same_run() {
    assert_eq!(run(3, 0.01), run(3, 0.01));
    assert_ne!(run(3, 0.01).0, run(4, 0.01).0);
}
