//! Kernel dispatch: a `SO_REUSEPORT` group of listeners whose member for each new connection is
//! chosen by a classic BPF program computing the same djb2 slot as the router, so that workers
//! accept their own connections and the primary stays off the per-connection path.
//!
//! [`asm`] assembles classic BPF with labels, [`program`] generates the slot-picking program,
//! `group` (Linux) binds the members and attaches the program.

// Elsewhere than Linux nothing attaches the program: only the tests (and `slot_member`) use
// the assembler and the generator, which are still built and checked there.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(crate) mod asm;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod group;
/// Elsewhere kernel dispatch does not exist: binding a group fails with `Unsupported`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[path = "unsupported.rs"]
pub(crate) mod group;
#[cfg(test)]
mod interp;
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(crate) mod program;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod sockopt;

/// What a group's `health()` reports (kernel dispatch's checks and repairs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// Repairs made since the group was bound.
    pub repairs: u64,
    /// What was found and done, newest last (the last few at most).
    pub recent: Vec<String>,
    /// Slots the kernel cannot serve any more: the router serves them through the fallback.
    pub detoured: Vec<usize>,
    /// Damage that cannot be repaired, now (empty when the group is whole).
    pub damage: Vec<String>,
}
