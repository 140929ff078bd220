//! The djb2 string hash, bit for bit as npm's `string-hash` computes it.
//!
//! sticky-cluster routes with `stringHash(remoteAddress) % workers`; keeping the exact function
//! keeps every client on the slot it had before a migration.

/// Hashes a sequence of UTF-16 code units the way `string-hash` does: seed 5381, multiply by 33,
/// XOR (not add) the unit, walking from the last unit to the first.
#[inline]
pub(crate) fn djb2<I>(units: I) -> u32
where
    I: DoubleEndedIterator<Item = u16>,
{
    units
        .rev()
        .fold(5381u32, |h, c| h.wrapping_mul(33) ^ u32::from(c))
}

/// djb2 of a route key, one unit per byte. Addresses are ASCII, where bytes and UTF-16 units are
/// the same; a non-ASCII header value used as a key hashes by its UTF-8 bytes.
#[inline]
pub fn djb2_ascii(text: &[u8]) -> u32 {
    djb2(text.iter().map(|&b| u16::from(b)))
}

/// murmur3's 32-bit finalizer. djb2 multiplies by 33, and 33 ≡ 1 (mod 32): modulo a power of two up
/// to 32 it only XORs the characters, ignoring their order, which leaves sequential address
/// blocks unevenly spread over 16 or 32 workers. Mixing djb2's output fixes that.
#[inline]
pub(crate) fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A route hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hash {
    /// djb2 exactly as sticky-cluster (the default: clients keep their worker when migrating).
    #[default]
    Djb2,
    /// djb2 followed by [`fmix32`]: even spread for any number of workers.
    Djb2Mix,
}

impl std::str::FromStr for Hash {
    type Err = String;

    /// `djb2` or `djb2-mix` (the option's values); the error says what was given.
    fn from_str(name: &str) -> Result<Hash, String> {
        match name {
            "djb2" => Ok(Hash::Djb2),
            "djb2-mix" => Ok(Hash::Djb2Mix),
            other => Err(format!("unknown hash {other:?}")),
        }
    }
}

impl Hash {
    /// The hash of an ASCII route key.
    #[inline]
    pub(crate) fn of(self, key: &[u8]) -> u32 {
        match self {
            Hash::Djb2 => djb2_ascii(key),
            Hash::Djb2Mix => fmix32(djb2_ascii(key)),
        }
    }
}

/// djb2 of any Rust string, over its UTF-16 units as JavaScript sees them.
pub fn djb2_str(text: &str) -> u32 {
    let units: Vec<u16> = text.encode_utf16().collect();
    djb2(units.into_iter())
}

/// The slot a route key belongs to: `hash(key) % slots` (djb2: as sticky-cluster computes it).
#[inline]
pub fn slot_for(key: &[u8], slots: usize, hash: Hash) -> usize {
    hash.of(key) as usize % slots.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &[(&str, u32)] = &[
        ("Mary had a little lamb.", 1766333550),
        ("Hello, world!", 343662184),
        ("127.0.0.1", 340519950),
        ("::ffff:127.0.0.1", 339916724),
        ("1.2.3.4", 3534154447),
        ("::ffff:1.2.3.4", 1215779413),
        ("::1", 193359316),
        ("2001:db8::1", 825529651),
        ("fe80::1%eth0", 2739542867),
        ("", 5381),
    ];

    #[test]
    fn matches_string_hash_vectors() {
        for &(text, want) in VECTORS {
            assert_eq!(djb2_ascii(text.as_bytes()), want, "{text:?}");
            assert_eq!(djb2_str(text), want, "{text:?}");
        }
    }

    #[test]
    fn fmix32_matches_murmur3() {
        // Reference values of MurmurHash3's fmix32.
        assert_eq!(fmix32(0), 0);
        assert_eq!(fmix32(1), 0x514e_28b7);
        assert_eq!(Hash::Djb2Mix.of(b"127.0.0.1"), fmix32(340519950));
        assert_eq!(Hash::Djb2.of(b"127.0.0.1"), 340519950);
    }

    #[test]
    fn walks_utf16_units_not_bytes() {
        // "é" is one UTF-16 unit (0xE9) but two UTF-8 bytes.
        assert_eq!(djb2_str("é"), 5381u32.wrapping_mul(33) ^ 0xE9);
        // A character outside the BMP is two units (a surrogate pair).
        assert_eq!(djb2_str("😀"), djb2([0xD83D, 0xDE00].into_iter()));
    }

    #[test]
    fn routes_by_djb2_modulo() {
        // djb2("::ffff:127.0.0.1") = 339916724; 339916724 % 4 = 0, % 3 = 2.
        assert_eq!(slot_for(b"::ffff:127.0.0.1", 4, Hash::Djb2), 0);
        assert_eq!(slot_for(b"::ffff:127.0.0.1", 3, Hash::Djb2), 2);
        // An empty key (unknown peer) hashes like sticky-cluster's `remoteAddress || ''`.
        assert_eq!(slot_for(b"", 7, Hash::Djb2), 5381 % 7);
        let mixed = crate::key::hash::fmix32(339916724) as usize % 4;
        assert_eq!(slot_for(b"::ffff:127.0.0.1", 4, Hash::Djb2Mix), mixed);
    }
}
