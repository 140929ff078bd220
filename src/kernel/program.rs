//! The classic BPF program that picks a reuseport member from a SYN: djb2 (or djb2-mix) of the
//! text Node will show as `remoteAddress`, modulo the number of slots.
//!
//! djb2 walks the text from its last character to its first, so the program emits the characters
//! in that order straight from the address bytes, without ever building the string: an IPv4
//! octet's ones digit, then its tens and hundreds when it has them, `.` between octets; an IPv6
//! group's hex digits from the lowest nibble up, `:` between groups, and Node's `::` for the
//! longest run of zero groups (found by an unrolled scan at run time).
//!
//! Members are numbered in `listen()` order. Member [`FALLBACK_MEMBER`] (0) takes what the
//! kernel must not hash — link-local IPv6 peers, whose text ends in `%ifname` that the program
//! cannot see — and slot `s` is member `s + 1` ([`slot_member`]). With the fallback first, a group
//! that grows by appending members never renumbers an existing slot.

use super::asm::{op, Asm, AsmError, Insn, Label, Target};
use crate::key::hash::Hash;
use std::net::IpAddr;

use Target::{Next, To};

/// The most slots a program serves; the options accept at most 1,024 workers.
pub(crate) const MAX_SLOTS: usize = 1024;

/// The member that receives what the program does not hash (link-local IPv6 peers, and any
/// packet that is neither IPv4 nor IPv6): the router accepts on it and routes those itself.
pub(crate) const FALLBACK_MEMBER: usize = 0;

/// The member (in `listen()` order) that serves slot `slot`.
pub(crate) const fn slot_member(slot: usize) -> usize {
    slot + 1
}

/// The family of the listening socket, which decides the text Node shows for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// An IPv4 listener: peers are `a.b.c.d`.
    V4,
    /// An IPv6 listener (dual-stack on `::`): IPv4 peers are `::ffff:a.b.c.d`, IPv6 peers are
    /// Node's IPv6 text.
    V6,
}

impl Family {
    /// The family of a listener bound to `ip`.
    pub(crate) fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Why no program could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramError {
    /// `slots` is outside `1..=MAX_SLOTS`.
    Slots(usize),
    /// The assembler refused the program (a bug: the tests assemble every shape).
    Asm(AsmError),
}

impl std::fmt::Display for ProgramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProgramError::Slots(n) => {
                write!(f, "kernel dispatch needs 1 to {MAX_SLOTS} slots, got {n}")
            }
            ProgramError::Asm(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProgramError {}

impl From<ProgramError> for std::io::Error {
    fn from(e: ProgramError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

// Scratch memory cells.
/// The running hash.
const H: u32 = 0;
/// The IPv6 group being printed.
const WORD: u32 = 1;
/// The four IPv4 octets, `a.b.c.d` in O + 0..4.
const O: u32 = 2;
/// Which prefix goes before an IPv4 text on an IPv6 listener ([`MAPPED`] or [`COMPAT`]).
const PREFIX: u32 = 6;
/// Zero-run scan: length of the current run, of the best run, and where the best run ends.
const RUN: u32 = 7;
const BEST: u32 = 8;
const END: u32 = 9;
/// First group of the compressed run (or [`NO_RUN`]).
const BASE: u32 = 10;
/// Temporary for the mixer.
const TMP: u32 = 11;

/// `::ffff:a.b.c.d`: every IPv4 peer of a dual-stack listener, and IPv4-mapped IPv6 peers.
const MAPPED: u32 = 0;
/// `::a.b.c.d`: IPv4-compatible peers (six zero groups, then a non-zero seventh).
const COMPAT: u32 = 1;
/// BASE and END when no run of at least two zero groups exists: past every group.
const NO_RUN: u32 = 9;

// Where the source address starts in each network header.
const IPV4_SOURCE: u32 = 12;
const IPV6_SOURCE: u32 = 8;

/// Health probes of the primary: IPv4 SYNs from `127.255.248.0/21` that carry a TCP MD5 option
/// go to the member whose index is the low 11 bits of the source address. No member has an MD5
/// key, so the kernel drops the SYN on that member and counts it in its `SO_MEMINFO` drops: the
/// primary learns which socket holds an index without a connection ever being made. A real client
/// never matches (its SYN would be dropped by any member anyway).
pub(crate) const PROBE_NET: u32 = 0x7fff_f800;
/// The mask of [`PROBE_NET`].
pub(crate) const PROBE_MASK: u32 = 0xffff_f800;
/// The bits of a probe's source address that name the member index.
pub(crate) const PROBE_INDEX: u32 = 0x7ff;
/// The first word of a TCP header's options on Linux when the MD5 option is present (NOP, NOP,
/// kind 19, length 18), at offset 20 of the TCP header.
const MD5_OPTION: u32 = 0x0101_1312;
/// Where that word is after a 20-byte IPv4 header.
const IPV4_MD5_OPTION: u32 = 40;

/// The source address of a probe for member index `index` (`None` past the probe range).
pub(crate) fn probe_source(index: usize) -> Option<std::net::Ipv4Addr> {
    let index = u32::try_from(index).ok().filter(|&i| i <= PROBE_INDEX)?;
    Some(std::net::Ipv4Addr::from(PROBE_NET | index))
}

/// The program for `slots` slots behind a `family` listener hashing with `hash`. It returns
/// `slot_member(hash(text) % slots)`, or [`FALLBACK_MEMBER`] for link-local IPv6 peers.
pub(crate) fn program(family: Family, hash: Hash, slots: usize) -> Result<Vec<Insn>, ProgramError> {
    let identity: Vec<u32> = (0..slots).map(|s| slot_member(s) as u32).collect();
    steering(family, hash, slots, &identity)
}

/// [`program`] when the kernel's numbering of the members is not the one they were formed in:
/// slot `s` goes to member index `table[s]` (which may be [`FALLBACK_MEMBER`], for a slot the
/// router serves). Also answers the primary's health probes (see [`PROBE_NET`]).
pub(crate) fn steering(
    family: Family,
    hash: Hash,
    slots: usize,
    table: &[u32],
) -> Result<Vec<Insn>, ProgramError> {
    if !(1..=MAX_SLOTS).contains(&slots) || table.len() != slots {
        return Err(ProgramError::Slots(slots));
    }
    let slots = u32::try_from(slots).map_err(|_| ProgramError::Slots(slots))?;
    let mut a = Asm::new();
    let fallback = a.label();
    let done = a.label();
    a.ld_imm(5381);
    a.st(H);
    a.ldb_net(0);
    a.alu(op::RSH, 4);
    match family {
        Family::V4 => {
            a.jeq(4, Next, To(fallback));
            probe(&mut a);
            copy_octets(&mut a, IPV4_SOURCE);
            ipv4_reversed(&mut a);
        }
        Family::V6 => {
            // Classic BPF only jumps forward: the IPv6 checks come first and jump ahead into
            // the IPv4 text for embedded IPv4 forms; the general IPv6 text comes last.
            let (ipv4, ipv4_text, ipv6_general) = (a.label(), a.label(), a.label());
            a.jeq(4, To(ipv4), Next);
            a.jeq(6, Next, To(fallback));
            ipv6_embedded_ipv4(&mut a, ipv4_text, ipv6_general, fallback);
            a.bind(ipv4);
            probe(&mut a);
            copy_octets(&mut a, IPV4_SOURCE);
            a.ld_imm(MAPPED);
            a.st(PREFIX);
            a.bind(ipv4_text);
            ipv4_reversed(&mut a);
            embedded_ipv4_prefix(&mut a);
            a.ja(done);
            a.bind(ipv6_general);
            ipv6_reversed(&mut a);
        }
    }
    a.bind(done);
    finish(&mut a, hash, slots, table);
    a.bind(fallback);
    a.ret_k(FALLBACK_MEMBER as u32);
    a.assemble().map_err(ProgramError::Asm)
}

/// Returns `table[hash % slots]` for the djb2 in H: one test per slot whose member is not at
/// `slot_member(slot)`, then `slot_member(hash % slots)`.
fn finish(a: &mut Asm, hash: Hash, slots: u32, table: &[u32]) {
    a.ld_mem(H);
    if hash == Hash::Djb2Mix {
        fmix32(a);
    }
    a.alu(op::MOD, slots);
    for (slot, &index) in (0u32..).zip(table) {
        if index != slot + slot_member(0) as u32 {
            let other = a.label();
            a.jeq(slot, Next, To(other));
            a.ret_k(index);
            a.bind(other);
        }
    }
    a.alu(op::ADD, slot_member(0) as u32);
    a.ret_a();
}

/// An IPv4 SYN from the probe range with an MD5 option returns the index its source names.
/// Costs real clients two instructions.
fn probe(a: &mut Asm) {
    let not_probe = a.label();
    a.insn(op::LD | op::W | op::ABS, net_offset(IPV4_SOURCE));
    a.alu(op::AND, PROBE_MASK);
    a.jeq(PROBE_NET, Next, To(not_probe));
    a.insn(op::LD | op::W | op::ABS, net_offset(IPV4_MD5_OPTION));
    a.jeq(MD5_OPTION, Next, To(not_probe));
    a.insn(op::LD | op::W | op::ABS, net_offset(IPV4_SOURCE));
    a.alu(op::AND, PROBE_INDEX);
    a.ret_a();
    a.bind(not_probe);
}

/// `k` of a load from byte `offset` of the network header.
fn net_offset(offset: u32) -> u32 {
    super::asm::NET_OFF.wrapping_add(offset as i32) as u32
}

/// Hashes the character in A: `h = h * 33 ^ A`.
fn hash_a(a: &mut Asm) {
    a.tax();
    a.ld_mem(H);
    a.alu(op::MUL, 33);
    a.alu_x(op::XOR);
    a.st(H);
}

/// Hashes constant characters, in the order given.
fn hash_chars(a: &mut Asm, chars: &[u8]) {
    a.ld_mem(H);
    for &c in chars {
        a.alu(op::MUL, 33);
        a.alu(op::XOR, u32::from(c));
    }
    a.st(H);
}

/// Copies the four bytes of an IPv4 address at `offset` of the network header into O..O+4.
fn copy_octets(a: &mut Asm, offset: u32) {
    for i in 0..4 {
        a.ldb_net(offset + i);
        a.st(O + i);
    }
}

/// Hashes `a.b.c.d` (octets in O..O+4) from its last character to its first.
fn ipv4_reversed(a: &mut Asm) {
    for i in (0..4).rev() {
        let octet = O + i;
        let done = a.label();
        a.ld_mem(octet);
        a.alu(op::MOD, 10);
        a.alu(op::ADD, u32::from(b'0'));
        hash_a(a);
        a.ld_mem(octet);
        a.jge(10, Next, To(done));
        a.alu(op::DIV, 10);
        a.alu(op::MOD, 10);
        a.alu(op::ADD, u32::from(b'0'));
        hash_a(a);
        a.ld_mem(octet);
        a.jge(100, Next, To(done));
        a.alu(op::DIV, 100);
        a.alu(op::ADD, u32::from(b'0'));
        hash_a(a);
        a.bind(done);
        if i > 0 {
            hash_chars(a, b".");
        }
    }
}

/// After an IPv4 text on an IPv6 listener: `::ffff:` or `::` (reversed), as PREFIX says.
fn embedded_ipv4_prefix(a: &mut Asm) {
    let colons = a.label();
    a.ld_mem(PREFIX);
    a.jeq(COMPAT, To(colons), Next);
    hash_chars(a, b":ffff");
    a.bind(colons);
    hash_chars(a, b"::");
}

/// Sorts the source of an IPv6 header: link-local peers go to `fallback`; `::ffff:a.b.c.d` and
/// `::a.b.c.d` (as libuv prints them) copy their IPv4 part and go to `ipv4_text`; the rest go
/// to `general`.
fn ipv6_embedded_ipv4(a: &mut Asm, ipv4_text: Label, general: Label, fallback: Label) {
    let mapped = a.label();
    // fe80::/10: Node appends %ifname, which is not in the packet.
    a.ldh_net(ipv6_group(0));
    a.alu(op::AND, 0xffc0);
    a.jeq(0xfe80, To(fallback), Next);
    // Five zero groups, then ffff (mapped) or 0 and a non-zero seventh (compatible).
    for i in 0..5 {
        a.ldh_net(ipv6_group(i));
        a.jeq(0, Next, To(general));
    }
    a.ldh_net(ipv6_group(5));
    a.jeq(0xffff, To(mapped), Next);
    a.jeq(0, Next, To(general));
    a.ldh_net(ipv6_group(6));
    a.jeq(0, To(general), Next);
    copy_octets(a, IPV6_SOURCE + 12);
    a.ld_imm(COMPAT);
    a.st(PREFIX);
    a.ja(ipv4_text);
    a.bind(mapped);
    copy_octets(a, IPV6_SOURCE + 12);
    a.ld_imm(MAPPED);
    a.st(PREFIX);
    a.ja(ipv4_text);
}

/// Offset of IPv6 source group `i` in the network header.
fn ipv6_group(i: u32) -> u32 {
    IPV6_SOURCE + 2 * i
}

/// Hashes the source of an IPv6 header that is neither link-local nor an embedded IPv4 form, as
/// libuv's `inet_ntop6` prints it, from the last character to the first.
fn ipv6_reversed(a: &mut Asm) {
    // The longest run of zero groups, the leftmost on ties (a later run must be longer).
    a.ld_imm(0);
    a.st(RUN);
    a.st(BEST);
    a.st(END);
    for i in 0..8 {
        let (non_zero, next) = (a.label(), a.label());
        a.ldh_net(ipv6_group(i));
        a.jeq(0, Next, To(if i < 7 { non_zero } else { next }));
        a.ld_mem(RUN);
        a.alu(op::ADD, 1);
        a.st(RUN);
        a.ldx_mem(BEST);
        a.jgt_x(Next, To(next));
        a.st(BEST);
        a.ld_imm(i + 1);
        a.st(END);
        a.ja(next);
        a.bind(non_zero);
        if i < 7 {
            a.ld_imm(0);
            a.st(RUN);
        }
        a.bind(next);
    }
    let (has_run, print) = (a.label(), a.label());
    a.ld_mem(BEST);
    a.jge(2, To(has_run), Next);
    a.ld_imm(NO_RUN);
    a.st(BASE);
    a.st(END);
    a.ja(print);
    a.bind(has_run);
    a.ldx_mem(BEST);
    a.ld_mem(END);
    a.alu_x(op::SUB);
    a.st(BASE);

    // Print from the last group to the first. A run that reaches the end adds a trailing ':';
    // its first group prints ':', the others nothing; every other group prints its hex digits
    // and, unless it is the first group, the ':' before it.
    a.bind(print);
    let groups = a.label();
    a.ld_mem(END);
    a.jeq(8, Next, To(groups));
    hash_chars(a, b":");
    a.bind(groups);
    for i in (0..8).rev() {
        let (outside, next) = (a.label(), a.label());
        a.ld_mem(BASE);
        a.jgt(i, To(outside), Next);
        a.ld_mem(END);
        a.jgt(i, Next, To(outside));
        a.ld_mem(BASE);
        a.jeq(i, Next, To(next));
        hash_chars(a, b":");
        a.ja(next);
        a.bind(outside);
        a.ldh_net(ipv6_group(i));
        a.st(WORD);
        hex_reversed(a);
        if i > 0 {
            hash_chars(a, b":");
        }
        a.bind(next);
    }
}

/// Hashes the group in A (also in WORD) as lowercase hex without leading zeros, lowest digit
/// first.
fn hex_reversed(a: &mut Asm) {
    let done = a.label();
    a.alu(op::AND, 0xf);
    hex_digit(a);
    for (at_least, shift) in [(0x10, 4), (0x100, 8), (0x1000, 12)] {
        a.ld_mem(WORD);
        a.jge(at_least, Next, To(done));
        a.alu(op::RSH, shift);
        if shift < 12 {
            a.alu(op::AND, 0xf);
        }
        hex_digit(a);
    }
    a.bind(done);
}

/// Hashes the nibble in A as a lowercase hex digit.
fn hex_digit(a: &mut Asm) {
    let digit = a.label();
    a.alu(op::ADD, u32::from(b'0'));
    a.jge(u32::from(b'9') + 1, Next, To(digit));
    a.alu(op::ADD, u32::from(b'a' - b'9' - 1));
    a.bind(digit);
    hash_a(a);
}

/// murmur3's finalizer on A, as [`crate::key::hash::fmix32`].
fn fmix32(a: &mut Asm) {
    for (shift, multiplier) in [(16, Some(0x85eb_ca6b)), (13, Some(0xc2b2_ae35)), (16, None)] {
        a.st(TMP);
        a.alu(op::RSH, shift);
        a.tax();
        a.ld_mem(TMP);
        a.alu_x(op::XOR);
        if let Some(m) = multiplier {
            a.alu(op::MUL, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::asm::MAX_INSNS;
    use crate::kernel::interp::{run, run_counted};
    use crate::key::address::AddressText;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const HASHES: [Hash; 2] = [Hash::Djb2, Hash::Djb2Mix];
    const SLOT_COUNTS: [usize; 8] = [1, 2, 3, 4, 7, 10, 16, MAX_SLOTS];

    /// The network header of a SYN from `source`, as the program sees it.
    fn ipv4_syn(source: Ipv4Addr) -> Vec<u8> {
        let mut header = vec![0u8; 20];
        header[0] = 0x45;
        header[8] = 64;
        header[9] = 6;
        header[12..16].copy_from_slice(&source.octets());
        header[16..20].copy_from_slice(&[127, 0, 0, 1]);
        header
    }

    fn ipv6_syn(source: Ipv6Addr) -> Vec<u8> {
        let mut header = vec![0u8; 40];
        header[0] = 0x60;
        header[6] = 6;
        header[7] = 64;
        header[8..24].copy_from_slice(&source.octets());
        header[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        header
    }

    /// The member the router's own hash picks for the text Node shows.
    fn member_for(text: &AddressText, hash: Hash, slots: usize) -> u32 {
        slot_member(hash.of(text.as_bytes()) as usize % slots) as u32
    }

    fn expected_v6(ip: Ipv6Addr, hash: Hash, slots: usize) -> u32 {
        if ip.segments()[0] & 0xffc0 == 0xfe80 {
            FALLBACK_MEMBER as u32
        } else {
            member_for(&AddressText::from_v6(&ip), hash, slots)
        }
    }

    fn build(family: Family, hash: Hash, slots: usize) -> Vec<Insn> {
        program(family, hash, slots).expect("every slot count in range assembles")
    }

    /// Every program shape once, for the property tests.
    fn all_programs() -> Vec<(Family, Hash, usize, Vec<Insn>)> {
        let mut all = Vec::new();
        for family in [Family::V4, Family::V6] {
            for hash in HASHES {
                for slots in SLOT_COUNTS {
                    all.push((family, hash, slots, build(family, hash, slots)));
                }
            }
        }
        all
    }

    #[test]
    fn sizes_are_within_the_kernel_limit_and_jumps_in_range() {
        for family in [Family::V4, Family::V6] {
            for hash in HASHES {
                let sizes: Vec<usize> = SLOT_COUNTS
                    .iter()
                    .map(|&k| build(family, hash, k).len())
                    .collect();
                // The slot count is only the modulus: one size per family and hash.
                assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
                let prog = build(family, hash, 16);
                println!("{family:?} {hash:?}: {} instructions", prog.len());
                assert!(prog.len() <= MAX_INSNS);
                for (pc, insn) in prog.iter().enumerate() {
                    if insn.code & 0x07 == op::JMP {
                        let reach = if insn.code == op::JMP | op::JA {
                            insn.k as usize
                        } else {
                            usize::from(insn.jt.max(insn.jf))
                        };
                        assert!(pc + 1 + reach < prog.len(), "jump at {pc}");
                    }
                }
            }
        }
        // Budgets: well under the limit, and the IPv4-only program stays small.
        assert!(build(Family::V4, Hash::Djb2Mix, 1).len() < 200);
        assert!(build(Family::V6, Hash::Djb2Mix, 1).len() < 1200);
    }

    #[test]
    fn instructions_run_per_syn() {
        let widest_v4 = Ipv4Addr::new(255, 255, 255, 255);
        let widest_v6: Ipv6Addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
            .parse()
            .expect("ip");
        for hash in HASHES {
            let v4 = build(Family::V4, hash, 16);
            let v6 = build(Family::V6, hash, 16);
            let runs = [
                (
                    "IPv4 listener, 255.255.255.255",
                    run_counted(&v4, &ipv4_syn(widest_v4)).1,
                ),
                (
                    "IPv4 listener, 1.1.1.1",
                    run_counted(&v4, &ipv4_syn(Ipv4Addr::new(1, 1, 1, 1))).1,
                ),
                (
                    "dual-stack, IPv4 255.255.255.255",
                    run_counted(&v6, &ipv4_syn(widest_v4)).1,
                ),
                (
                    "dual-stack, ::1",
                    run_counted(&v6, &ipv6_syn(Ipv6Addr::LOCALHOST)).1,
                ),
                (
                    "dual-stack, 8 groups of 4 digits",
                    run_counted(&v6, &ipv6_syn(widest_v6)).1,
                ),
            ];
            for (what, steps) in runs {
                println!("{hash:?} {what}: {steps} instructions run");
                assert!(steps < 700, "{what}");
            }
        }
    }

    #[test]
    fn refuses_slot_counts_out_of_range() {
        assert_eq!(
            program(Family::V4, Hash::Djb2, 0),
            Err(ProgramError::Slots(0))
        );
        assert_eq!(
            program(Family::V6, Hash::Djb2, MAX_SLOTS + 1),
            Err(ProgramError::Slots(MAX_SLOTS + 1))
        );
    }

    #[test]
    fn known_vectors() {
        // "127.0.0.1" → 340519950 and "::ffff:127.0.0.1" → 339916724 (string-hash).
        let v4 = build(Family::V4, Hash::Djb2, MAX_SLOTS);
        let syn = ipv4_syn(Ipv4Addr::LOCALHOST);
        assert_eq!(run(&v4, &syn), (340519950 % 1024) + 1);
        let v6 = build(Family::V6, Hash::Djb2, MAX_SLOTS);
        assert_eq!(run(&v6, &syn), (339916724 % 1024) + 1);
        assert_eq!(
            run(&v6, &ipv6_syn(Ipv6Addr::LOCALHOST)),
            (193359316 % 1024) + 1
        );
        let doc: Ipv6Addr = "2001:db8::1".parse().expect("literal");
        assert_eq!(run(&v6, &ipv6_syn(doc)), (825529651 % 1024) + 1);
    }

    #[test]
    fn ipv4_every_octet_width() {
        // Octets with one, two and three digits in every position.
        let widths = [0u8, 7, 10, 42, 99, 100, 199, 255];
        for (family, hash, slots, prog) in all_programs() {
            for &a in &widths {
                for &b in &widths {
                    for &c in &widths {
                        for &d in &widths {
                            let ip = Ipv4Addr::new(a, b, c, d);
                            let text = match family {
                                Family::V4 => AddressText::from_v4(&ip),
                                Family::V6 => AddressText::from_v6(&ip.to_ipv6_mapped()),
                            };
                            assert_eq!(
                                run(&prog, &ipv4_syn(ip)),
                                member_for(&text, hash, slots),
                                "{family:?} {hash:?} {slots} {ip}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A non-zero group with 1 to 4 hex digits (any digits, the first non-zero), or ffff.
    fn non_zero_group(seed: u64) -> u16 {
        let digits = (seed % 5) as u32;
        if digits == 0 {
            return 0xffff;
        }
        let lower = (seed >> 8) as u16 & ((1u32 << (4 * (digits - 1))) - 1) as u16;
        let first = ((seed >> 32) % 15 + 1) as u16;
        (first << (4 * (digits - 1))) | lower
    }

    #[test]
    fn ipv6_every_zero_run_pattern() {
        let programs: Vec<_> = all_programs()
            .into_iter()
            .filter(|(family, ..)| *family == Family::V6)
            .collect();
        // xorshift: deterministic, varied fills for each of the 256 zero patterns.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for zeros in 0u32..256 {
            for _ in 0..4 {
                let mut groups = [0u16; 8];
                for (i, g) in groups.iter_mut().enumerate() {
                    if zeros & (1 << i) == 0 {
                        *g = non_zero_group(next());
                    }
                }
                if next() % 2 == 0 && groups[0] != 0 {
                    // Keep the first group away from fe80::/10 half the time so that most
                    // patterns are hashed, not sent to the fallback.
                    groups[0] &= 0x7fff;
                    groups[0] |= 1;
                }
                let ip = Ipv6Addr::from(groups);
                for (_, hash, slots, prog) in &programs {
                    assert_eq!(
                        run(prog, &ipv6_syn(ip)),
                        expected_v6(ip, *hash, *slots),
                        "{hash:?} {slots} {ip} ({})",
                        AddressText::from_v6(&ip).as_str()
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 256 * 4 * programs.len());
    }

    #[test]
    fn ipv6_embedded_ipv4_and_link_local() {
        let prog = build(Family::V6, Hash::Djb2, MAX_SLOTS);
        let cases: &[(&str, Option<&str>)] = &[
            ("::ffff:1.2.3.4", Some("::ffff:1.2.3.4")),
            ("::ffff:0.0.0.0", Some("::ffff:0.0.0.0")),
            ("::1.2.3.4", Some("::1.2.3.4")),
            ("::0.1.0.0", Some("::0.1.0.0")),
            ("::0.0.0.2", Some("::2")),
            ("::", Some("::")),
            ("::1", Some("::1")),
            ("::fffe:1.2.3.4", Some("::fffe:102:304")),
            ("1::ffff:1.2.3.4", Some("1::ffff:102:304")),
            ("1:0:0:2::", Some("1:0:0:2::")),
            ("1:0:0:2:0:0:3:4", Some("1::2:0:0:3:4")),
            ("1:0:2:0:0:0:3:4", Some("1:0:2::3:4")),
            ("fe80::1", None),
            ("febf:ffff::1", None),
            ("fec0::1", Some("fec0::1")),
        ];
        for &(input, text) in cases {
            let ip: Ipv6Addr = input.parse().expect("literal");
            let got = run(&prog, &ipv6_syn(ip));
            match text {
                Some(text) => {
                    assert_eq!(AddressText::from_v6(&ip).as_str(), text, "reference");
                    assert_eq!(
                        got,
                        (crate::key::hash::djb2_ascii(text.as_bytes()) % 1024) + 1,
                        "{input}"
                    );
                }
                None => assert_eq!(got, FALLBACK_MEMBER as u32, "{input}"),
            }
        }
    }

    #[test]
    fn other_packets_go_to_the_fallback() {
        let v4 = build(Family::V4, Hash::Djb2, 4);
        assert_eq!(
            run(&v4, &ipv6_syn(Ipv6Addr::LOCALHOST)),
            FALLBACK_MEMBER as u32
        );
        let v6 = build(Family::V6, Hash::Djb2, 4);
        let mut odd = ipv4_syn(Ipv4Addr::LOCALHOST);
        odd[0] = 0x55;
        assert_eq!(run(&v6, &odd), FALLBACK_MEMBER as u32);
        assert_eq!(run(&v4, &odd), FALLBACK_MEMBER as u32);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_ipv4_matches_the_router(raw: u32, slots in 1..=MAX_SLOTS, mix: bool) {
            let hash = if mix { Hash::Djb2Mix } else { Hash::Djb2 };
            let ip = Ipv4Addr::from(raw);
            let v4 = build(Family::V4, hash, slots);
            prop_assert_eq!(run(&v4, &ipv4_syn(ip)), member_for(&AddressText::from_v4(&ip), hash, slots));
            let v6 = build(Family::V6, hash, slots);
            let mapped = AddressText::from_v6(&ip.to_ipv6_mapped());
            prop_assert_eq!(run(&v6, &ipv4_syn(ip)), member_for(&mapped, hash, slots));
            // The same peer arriving as an IPv4-mapped IPv6 header.
            prop_assert_eq!(run(&v6, &ipv6_syn(ip.to_ipv6_mapped())), member_for(&mapped, hash, slots));
        }

        #[test]
        fn random_ipv6_matches_the_router(raw: u128, zeros: u8, slots in 1..=MAX_SLOTS, mix: bool) {
            let hash = if mix { Hash::Djb2Mix } else { Hash::Djb2 };
            let mut groups = Ipv6Addr::from(raw).segments();
            for (i, g) in groups.iter_mut().enumerate() {
                if zeros & (1 << i) != 0 {
                    *g = 0;
                }
            }
            let ip = Ipv6Addr::from(groups);
            let v6 = build(Family::V6, hash, slots);
            prop_assert_eq!(run(&v6, &ipv6_syn(ip)), expected_v6(ip, hash, slots));
        }

        #[test]
        fn compatible_ipv4_matches_the_router(raw: u32, slots in 1..=MAX_SLOTS) {
            let ip = Ipv4Addr::from(raw).to_ipv6_compatible();
            let v6 = build(Family::V6, Hash::Djb2, slots);
            prop_assert_eq!(run(&v6, &ipv6_syn(ip)), expected_v6(ip, Hash::Djb2, slots));
        }
    }

    /// A SYN from `source` whose TCP header has `options` (as the program sees it, the packet
    /// ends there).
    fn ipv4_syn_with(source: Ipv4Addr, options: &[u8]) -> Vec<u8> {
        let mut packet = ipv4_syn(source);
        packet.extend_from_slice(&[0u8; 20]);
        packet.extend_from_slice(options);
        packet
    }

    /// Linux puts the MD5 option first.
    fn ipv4_md5_syn(source: Ipv4Addr) -> Vec<u8> {
        let mut options = vec![1, 1, 19, 18];
        options.extend_from_slice(&[0; 16]);
        ipv4_syn_with(source, &options)
    }

    #[test]
    fn probes_name_their_member_index_and_nothing_else_does() {
        for family in [Family::V4, Family::V6] {
            let prog = build(family, Hash::Djb2, 4);
            for index in [0, 1, 4, 9, 2047] {
                let source = probe_source(index).expect("in range");
                assert_eq!(run(&prog, &ipv4_md5_syn(source)), index as u32);
                // Without the MD5 option, the probe range routes as any client.
                let text = AddressText::from_ip(&match family {
                    Family::V4 => IpAddr::V4(source),
                    Family::V6 => IpAddr::V6(source.to_ipv6_mapped()),
                });
                let mss = ipv4_syn_with(source, &[2, 4, 5, 180]);
                assert_eq!(run(&prog, &mss), member_for(&text, Hash::Djb2, 4));
            }
            // The MD5 option from any other source changes nothing either.
            let other = Ipv4Addr::new(10, 1, 2, 3);
            assert_eq!(
                run(&prog, &ipv4_md5_syn(other)),
                run(&prog, &ipv4_syn(other))
            );
        }
        assert_eq!(probe_source(2048), None);
    }

    #[test]
    fn a_table_sends_each_slot_to_its_member_index() {
        let slots = 5;
        // Slot 1's member moved to index 5, slot 4's to index 2, slot 3 goes to the fallback.
        let table = [1, 5, 3, 0, 2];
        for family in [Family::V4, Family::V6] {
            let prog = steering(family, Hash::Djb2Mix, slots, &table).expect("assembles");
            for i in 0..500u32 {
                let ip = Ipv4Addr::from(0x0a00_0000 | i.wrapping_mul(2_654_435_761) >> 8);
                let text = AddressText::from_ip(&match family {
                    Family::V4 => IpAddr::V4(ip),
                    Family::V6 => IpAddr::V6(ip.to_ipv6_mapped()),
                });
                let slot = Hash::Djb2Mix.of(text.as_bytes()) as usize % slots;
                assert_eq!(run(&prog, &ipv4_syn(ip)), table[slot], "{text:?}");
            }
        }
        assert!(steering(Family::V4, Hash::Djb2, 3, &[1, 2]).is_err());
        // The largest table fits the kernel's limit.
        let reversed: Vec<u32> = (0..MAX_SLOTS as u32).rev().map(|s| s + 1).collect();
        let prog = steering(Family::V6, Hash::Djb2Mix, MAX_SLOTS, &reversed).expect("fits");
        assert!(prog.len() <= MAX_INSNS, "{}", prog.len());
    }
}
