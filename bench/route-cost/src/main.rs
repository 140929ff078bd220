//! ns per address of what the router does per accepted connection to pick a slot:
//! `AddressText::new(&peer)` + `djb2_ascii` + `% slots` (`slot_for`), from the core crate.
//! usage: route-cost [addresses=100000] [slots=10]   (prints one JSON line)
use sticky_rs::key::{address, hash};

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

fn best_ns_per(peers: &[SocketAddr], slots: usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut sum = 0usize;
        for peer in peers {
            let text = address::AddressText::new(black_box(peer));
            sum += hash::djb2_ascii(text.as_bytes()) as usize % slots;
        }
        black_box(sum);
        best = best.min(start.elapsed().as_nanos() as f64 / peers.len() as f64);
    }
    best
}

fn best_of<F: FnMut() -> usize>(n: usize, mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        black_box(f());
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let slots: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut x: u32 = 0x9e37_79b9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let v4: Vec<Ipv4Addr> = (0..n).map(|_| Ipv4Addr::from(next())).collect();
    let plain: Vec<SocketAddr> = v4.iter().map(|ip| SocketAddr::V4(SocketAddrV4::new(*ip, 4000))).collect();
    let mapped: Vec<SocketAddr> = v4
        .iter()
        .map(|ip| SocketAddr::V6(SocketAddrV6::new(ip.to_ipv6_mapped(), 4000, 0, 0)))
        .collect();
    // the two halves separately: formatting only, and djb2 % slots of pre-formatted text
    let format_ns = best_of(n, || {
        plain
            .iter()
            .map(|p| address::AddressText::new(black_box(p)).as_bytes().len())
            .sum()
    });
    let texts: Vec<address::AddressText> = plain.iter().map(address::AddressText::new).collect();
    let hash_ns = best_of(n, || {
        texts
            .iter()
            .map(|t| hash::djb2_ascii(black_box(t).as_bytes()) as usize % slots)
            .sum()
    });
    println!(
        "{{\"addresses\":{},\"slots\":{},\"v4_ns\":{:.2},\"mapped_ns\":{:.2},\"v4_format_ns\":{:.2},\"v4_hash_ns\":{:.2}}}",
        n,
        slots,
        best_ns_per(&plain, slots),
        best_ns_per(&mapped, slots),
        format_ns,
        hash_ns
    );
}
