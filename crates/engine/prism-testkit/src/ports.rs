//! Free TCP ports on the loopback interface, for the servers and workers a test starts.
//!
//! A port picked by binding port 0 comes from the kernel's ephemeral range, the range every
//! outgoing connection also takes its source port from. Between the pick and the server's own
//! bind (seconds for a JVM), any client connection of any test running alongside may take
//! that port, and the server fails with "Address already in use". Ports are therefore picked
//! at random below the ephemeral range, where no connection's source port ever lands, and
//! checked by binding them. Where the kernel's range leaves no room below it, port 0 is the
//! fallback.

use std::net::TcpListener;
use std::ops::Range;

use anyhow::Context;
use rand::Rng;

/// The lowest port handed out: well above the fixed ports of the development stack
/// (Kafka 9092 and 9093, PostgreSQL 5432, Redis 6379, Prometheus 9090).
const LOWEST: u16 = 10_000;
/// Below this much room under the ephemeral range, picking from it is not worth it.
const LEAST_ROOM: u16 = 2_000;
/// Where the kernel's range cannot be read: Linux's default start.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// A port nobody listens on right now, outside the ephemeral range where possible.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct ports nobody listens on right now. They are held open together while they are
/// picked, so none is handed out twice.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    free_ports_in(n, below_ephemeral_range())
}

/// `n` distinct ports nobody listens on, from `range`, or from the kernel without one.
fn free_ports_in(n: usize, range: Option<Range<u16>>) -> anyhow::Result<Vec<u16>> {
    let mut rng = rand::rng();
    let mut held = Vec::with_capacity(n);
    let mut tries = 0_u32;
    while held.len() < n {
        let listener = match &range {
            Some(range) => {
                tries += 1;
                anyhow::ensure!(
                    tries <= 10_000,
                    "fewer than {n} free ports among 10 000 tries in {range:?} on 127.0.0.1"
                );
                match TcpListener::bind(("127.0.0.1", rng.random_range(range.clone()))) {
                    Ok(listener) => listener,
                    // Taken, by a server or by one of this call's own picks.
                    Err(_) => continue,
                }
            }
            None => TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for a free port")?,
        };
        held.push(listener);
    }
    held.iter().map(|listener| Ok(listener.local_addr()?.port())).collect()
}

/// The ports from [`LOWEST`] up to the start of the kernel's ephemeral range, if that leaves
/// room.
fn below_ephemeral_range() -> Option<Range<u16>> {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    (start >= LOWEST.saturating_add(LEAST_ROOM)).then_some(LOWEST..start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports = free_ports(64).expect("free ports");
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 64, "a port was handed out twice: {ports:?}");
        if let Some(range) = below_ephemeral_range() {
            assert!(ports.iter().all(|port| range.contains(port)), "{ports:?} not all in {range:?}");
        }
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("port {port} is not free: {e}"));
        }
    }

    #[test]
    fn a_port_in_use_is_never_handed_out() {
        // Three ports in a row, the middle one listened on: the other two are all there is.
        let (taken, first) = (1..100)
            .find_map(|_| {
                let first = free_port().ok()?;
                let ports = [first, first.checked_add(1)?, first.checked_add(2)?];
                if ports.iter().any(|&port| TcpListener::bind(("127.0.0.1", port)).is_err()) {
                    return None;
                }
                Some((TcpListener::bind(("127.0.0.1", first + 1)).ok()?, first))
            })
            .expect("three free ports in a row");
        for _ in 0..20 {
            let mut ports = free_ports_in(2, Some(first..first + 3)).expect("the two free ports");
            ports.sort_unstable();
            assert_eq!(ports, vec![first, first + 2]);
        }
        assert!(free_ports_in(3, Some(first..first + 3)).is_err(), "the taken port was handed out");
        drop(taken);
    }
}
