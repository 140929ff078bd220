//! Kernel dispatch: a `SO_REUSEPORT` group of listeners whose member for each new connection is
//! chosen by a classic BPF program computing the same djb2 slot as the router, so that workers
//! accept their own connections and the primary stays off the per-connection path.
//!
//! [`asm`] assembles classic BPF with labels, [`program`] generates the slot-picking program,
//! `group` (Linux) binds the members and attaches the program.

pub mod asm;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub mod group;
#[cfg(test)]
mod interp;
pub mod program;
