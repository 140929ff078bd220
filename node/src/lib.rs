//! The binding: JavaScript classes over the core, nothing more: `router.rs` (the primary's
//! `Router`), `receiver.rs` (a worker's `Receiver`), `upgrade.rs` (the router's side of a
//! hot upgrade, `sd_notify`), and here the pure functions.
//!
//! Errors are thrown with a `code` (see `errors.rs`); `lib/binding.js` turns the router's
//! start errors into Node-style errors with `code`, `errno`, `syscall`, `address` and `port`.
//! Channel ids are `u32` everywhere (the core's `ChannelId`).

use napi_derive::napi;

mod errors;
mod receiver;
mod router;
mod upgrade;

use errors::{error, Result, INVALID};
// Exported to JavaScript from their module; public here as the other functions are.
pub use upgrade::{close_on_exec, sd_notify};

use sticky_rs::key::address::AddressText;
use sticky_rs::key::hash::{djb2_str, slot_for, Hash};
use sticky_rs::key::trust::Trusted;

/// djb2 of a string's UTF-16 units, as npm's `string-hash`.
#[napi]
pub fn djb2(text: String) -> u32 {
    djb2_str(&text)
}

fn parse_ip(ip: &str) -> Result<AddressText> {
    let parsed: std::net::IpAddr = ip
        .parse()
        .map_err(|_| error(INVALID, format!("not an IP address: {ip}")))?;
    Ok(AddressText::from_ip(&parsed))
}

/// An IP address (text) reformatted the way the router formats peers, for parity tests.
#[napi]
pub fn address_text(ip: String) -> Result<String> {
    Ok(parse_ip(&ip)?.as_str().to_owned())
}

pub(crate) fn hash_named(name: &str) -> Result<Hash> {
    name.parse()
        .map_err(|reason: String| error(INVALID, reason))
}

/// The slot of each address (formatted by the router's rules, then `hash % slots`; `hash` is
/// `djb2` unless given), in one call.
#[napi]
pub fn slots_of(ips: Vec<String>, slots: u32, hash: Option<String>) -> Result<Vec<u32>> {
    let hash = hash_named(hash.as_deref().unwrap_or("djb2"))?;
    ips.iter()
        .map(|ip| Ok(slot_for(parse_ip(ip)?.as_bytes(), slots as usize, hash) as u32))
        .collect()
}

/// The first entry of `entries` that is neither an IP address nor a CIDR range, if any.
#[napi]
pub fn invalid_trusted_proxy(entries: Vec<String>) -> Option<String> {
    Trusted::parse(&entries).err()
}
