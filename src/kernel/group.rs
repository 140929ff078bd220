//! The `SO_REUSEPORT` group: one listener per slot plus the fallback, on one address and port,
//! with the slot-picking program attached.
//!
//! The kernel numbers a group's members in `listen()` order and, when a member closes, moves the
//! last one into its index: every member stays open here for the life of the group, so the
//! numbering the program relies on never changes, whatever workers do with their copies.
//!
//! Trust boundary: a process of the same user can bind the port with `SO_REUSEPORT` too, join the
//! group and attach its own program; another user gets `EADDRINUSE`. [`Group::bind`] refuses a
//! port that already has a listener, so that a second instance fails instead of merging. (The
//! check is a bind that is closed before the members bind: a process that takes the port in
//! between makes the members' binds fail, or joins if it set `SO_REUSEPORT` itself.)

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::asm::{op, Insn};
use super::program::{probe_source, program, slot_member, steering, Family, FALLBACK_MEMBER};
use super::sockopt::{
    attach, backlog, drops, filter_len, get_int, new_socket, probe, set_filter, set_int,
    set_md5_key, tcp_info, SO_DETACH_FILTER, SO_LOCK_FILTER,
};
use crate::key::hash::Hash;

/// How long a probe's SYN may take to be counted (on loopback it is counted before `connect`
/// returns; this bounds a probe to a member that is not ours).
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
/// What a group remembers of what it repaired, newest last.
const RECENT: usize = 16;
/// Members whose index one check verifies (all of them in a group up to this size; in a larger
/// one the first, the last, which catches any single member that left and joined again, and a
/// window that moves on).
const VERIFY_PER_CHECK: usize = 16;
/// Probes one check sends at least: a group of two sockets without a program passes them all
/// by chance once in 2^12.
const MIN_PROBES: usize = 12;
/// Foreign sockets a measurement passes over before it gives up (every slot then goes to the
/// fallback).
const MAX_FOREIGN: usize = 64;

/// The members of one reuseport group, all listening, with the program attached.
#[derive(Debug)]
pub(crate) struct Group {
    /// In `listen()` order: [`FALLBACK_MEMBER`] first, then slot `s` at `slot_member(s)`.
    members: Vec<OwnedFd>,
    local: SocketAddr,
    family: Family,
    hash: Hash,
    backlog: i32,
    /// What [`Group::check`] knows and found; behind a lock: the router thread checks
    /// periodically, the JavaScript thread before it hands a member to a new worker.
    health: std::sync::Mutex<Health>,
}

/// What a group knows of its members in the kernel, and what it repaired.
#[derive(Debug, Default)]
struct Health {
    /// Per member: the accept backlog the kernel holds (`TCP_INFO` `tcpi_sacked` of a listener).
    max_backlog: Vec<u32>,
    /// Per member: its index in the kernel's group, as last measured.
    index: Vec<u32>,
    /// Per slot: its member carries a socket filter locked with `SO_LOCK_FILTER`, so the
    /// program sends its clients to the fallback, where the router routes them.
    detoured: Vec<bool>,
    /// The kernel's numbering could not be measured: every slot goes to the fallback.
    unknown_order: bool,
    /// Indices below our last one held by sockets of other processes, as last measured.
    foreign_at: Vec<u32>,
    /// A socket of another process holds an index in the group (past ours, or `foreign_at`).
    foreign: bool,
    /// The next index the periodic probe verifies besides the first and the last.
    rotate: usize,
    /// Stopping (a socket filter drops every SYN on purpose): nothing is checked any more.
    stopped: bool,
    /// Another process checks the same members for now (an upgrade, see [`Group::pause_checks`]).
    paused: bool,
    /// Repairs made since the group was bound.
    repairs: u64,
    /// What was found and done, newest last (at most [`RECENT`]).
    recent: std::collections::VecDeque<String>,
    /// Probes cannot be made (an IPv6-only address, a kernel without TCP MD5 or `SO_MEMINFO`):
    /// the program is re-attached blindly.
    no_probes: bool,
}

use super::HealthReport;

impl Group {
    /// Binds `slots + 1` listeners to `addr` with `SO_REUSEPORT` (the fallback first, then one
    /// per slot), listens on each with `backlog`, and attaches the program that sends each SYN
    /// to `slot_member(hash(remoteAddress) % slots)`.
    ///
    /// A port that already has a listener fails with `EADDRINUSE` (checked with a plain bind
    /// first). Port 0 picks a free port for the whole group. An IPv6 wildcard is dual-stack; on a
    /// machine without IPv6 it falls back to `0.0.0.0`, as Node does. Members are non-blocking
    /// and close-on-exec.
    pub(crate) fn bind(
        addr: SocketAddr,
        slots: usize,
        hash: Hash,
        backlog: i32,
    ) -> io::Result<Group> {
        match Self::bind_exact(addr, slots, hash, backlog) {
            Err(e)
                if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                    && addr.ip() == Ipv6Addr::UNSPECIFIED =>
            {
                let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
                Self::bind_exact(v4, slots, hash, backlog)
            }
            other => other,
        }
    }

    fn bind_exact(addr: SocketAddr, slots: usize, hash: Hash, backlog: i32) -> io::Result<Group> {
        let family = Family::of(&addr.ip());
        let steer = program(family, hash, slots)?;
        let mut group = Self::form(addr, slots, backlog)?;
        group.hash = hash;
        group.steer(&steer)
    }

    /// A group whose members another process formed and passed on (an upgrade's new primary,
    /// see `router::inherit`, which checked them): `members` in the kernel's order, the fallback
    /// first, bound to `local`. Nothing is bound, so member `i` stays at index `i` and every
    /// client on its slot; the program is attached again (this version's; the group is the same).
    pub(crate) fn adopt(
        members: Vec<OwnedFd>,
        local: SocketAddr,
        hash: Hash,
        backlog: i32,
    ) -> io::Result<Group> {
        let steer = program(
            Family::of(&local.ip()),
            hash,
            members.len().saturating_sub(1),
        )?;
        Self::assemble(members, local, hash, backlog)?.steer(&steer)
    }

    /// Attaches `steer` once every member listens (a program attached to a member that does not
    /// listen yet is dropped), and finds out whether probes work here.
    fn steer(self, steer: &[Insn]) -> io::Result<Group> {
        attach(self.fallback(), steer)?;
        // Probes need TCP MD5 (CONFIG_TCP_MD5SIG) and SO_MEMINFO (Linux 4.12): without them,
        // every probe would look lost and the checks would detour every slot.
        let probes_work = (0..3).any(|_| self.probe(FALLBACK_MEMBER) == Some(FALLBACK_MEMBER));
        self.lock().no_probes |= !probes_work;
        Ok(self)
    }

    /// Binds and listens on every member, with a program that sends every SYN to the fallback
    /// meanwhile (the router routes those exactly; without a program the kernel would spread
    /// them at random over the members listening so far).
    fn form(addr: SocketAddr, slots: usize, backlog: i32) -> io::Result<Group> {
        let local = probe(addr)?;
        let mut members = Vec::with_capacity(slot_member(slots));
        for member in 0..slot_member(slots) {
            let socket = new_socket(local, true)?;
            socket.bind(&local.into())?;
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            if member == FALLBACK_MEMBER {
                attach(socket.as_fd(), &[to_fallback()])?;
            }
            members.push(OwnedFd::from(socket));
        }
        Group::assemble(members, local, Hash::Djb2, backlog)
    }

    /// A group of members that listen already, in `listen()` order (the fallback, then one per
    /// slot), all bound to `local`, whose program (if any) hashes with `hash`: what the checks
    /// need to know of them is read off the sockets. [`Group::bind`] makes its members with
    /// [`Group::form`]; members received from elsewhere (another process's group) come in here.
    pub(crate) fn assemble(
        members: Vec<OwnedFd>,
        local: SocketAddr,
        hash: Hash,
        backlog: i32,
    ) -> io::Result<Group> {
        let slots = members.len().saturating_sub(1);
        let health = Health {
            max_backlog: members
                .iter()
                .map(|m| tcp_info(m.as_fd()).map(|i| i.tcpi_sacked))
                .collect::<io::Result<Vec<u32>>>()?,
            index: (0..members.len() as u32).collect(),
            detoured: vec![false; slots],
            no_probes: probe_target(local).is_none(),
            ..Health::default()
        };
        Ok(Group {
            members,
            local,
            family: Family::of(&local.ip()),
            hash,
            backlog,
            health: std::sync::Mutex::new(health),
        })
    }

    /// The number of slots (members other than the fallback).
    fn slots(&self) -> usize {
        self.members.len() - 1
    }

    /// Every member in the kernel's order (the fallback first), e.g. to pass the group on to an
    /// upgrade's new primary.
    pub(crate) fn members(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.members.iter().map(AsFd::as_fd)
    }

    /// Another process holds the same members and checks them (an upgrade under way): two
    /// processes probing at once would count each other's probes, so one of them pauses.
    pub(crate) fn pause_checks(&self, paused: bool) {
        self.lock().paused = paused;
    }

    /// The member that receives link-local IPv6 peers, for the router to accept on.
    pub(crate) fn fallback(&self) -> BorrowedFd<'_> {
        self.members[FALLBACK_MEMBER].as_fd()
    }

    /// The member serving `slot`, for its worker to listen on (`None` past the last slot).
    pub(crate) fn slot(&self, slot: usize) -> Option<BorrowedFd<'_>> {
        self.members.get(slot_member(slot)).map(AsFd::as_fd)
    }

    /// The first step of a graceful stop: every member drops new SYNs (a socket filter that
    /// returns 0), so that nothing more joins the accept queues while the workers accept what is
    /// in them. Clients whose SYN was dropped retry, and are refused once [`Group::stop`] ran.
    pub(crate) fn refuse_new(&self) -> io::Result<()> {
        self.lock().stopped = true;
        let drop_all = [Insn {
            code: op::RET | op::K,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        for member in &self.members {
            set_filter(member.as_fd(), libc::SO_ATTACH_FILTER, &drop_all)?;
        }
        Ok(())
    }

    /// The members stop listening, for every process that holds them: new clients are refused.
    /// Connections already accepted go on; any still queued are reset.
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        for member in &self.members {
            let _ =
                nix::sys::socket::shutdown(member.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
    }

    /// How many connections wait in a member's accept queue (`tcpi_unacked` of `TCP_INFO` on a
    /// listener), e.g. for a slot whose worker is not listening yet.
    pub(crate) fn queued(&self, member: usize) -> io::Result<u32> {
        let fd = self
            .members
            .get(member)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such member"))?;
        Ok(tcp_info(fd.as_fd())?.tcpi_unacked)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the checks repaired, and what is damaged now.
    pub(crate) fn health(&self) -> HealthReport {
        let h = self.lock();
        let detoured: Vec<usize> = (0..h.detoured.len()).filter(|&s| h.detoured[s]).collect();
        let mut damage: Vec<String> = detoured
            .iter()
            .map(|s| format!("slot {s}: its socket carries a socket filter locked with SO_LOCK_FILTER, which cannot be removed; its clients are routed by the primary"))
            .collect();
        if h.unknown_order {
            damage.push("the kernel's numbering of the group could not be measured: every slot is routed by the primary".into());
        }
        if h.foreign {
            damage.push("a socket of another process is in the group (it bound the port with SO_REUSEPORT); it gets no client while the program is intact".into());
        }
        HealthReport {
            repairs: h.repairs,
            recent: h.recent.iter().cloned().collect(),
            detoured,
            damage,
        }
    }

    /// Finds what code holding a member (a worker, or a process of the same user that joined the
    /// group) changed, and undoes it: a member that stopped listening (`shutdown()`) listens
    /// again; a changed backlog (`listen(fd, n)`) is set back; a socket filter is removed, or,
    /// locked with `SO_LOCK_FILTER`, its slot is sent to the fallback (the router serves it);
    /// the program is attached again (a foreign `SO_ATTACH_REUSEPORT_CBPF`,
    /// `SO_DETACH_REUSEPORT_BPF`), following the kernel's numbering of the members, which the
    /// probes measure (see [`super::program::PROBE_NET`]). Returns how many repairs it made.
    /// Never closes a member, and member `slot_member(s)` keeps serving slot `s`.
    pub(crate) fn check(&self) -> u64 {
        let mut h = self.lock();
        if h.stopped || h.paused {
            return 0;
        }
        let before = h.repairs;
        let mut renumbered = false;
        for m in 0..self.members.len() {
            renumbered |= self.repair_member(&mut h, m);
        }
        if h.no_probes {
            // Nothing to measure with: once a member left and joined again, the numbering is
            // unknown and every slot goes to the fallback; the program is attached again.
            if renumbered && !h.unknown_order {
                h.unknown_order = true;
                h.note("the kernel's numbering of the group's sockets changed and cannot be measured here (probes are IPv4 SYNs with a TCP MD5 option, counted by SO_MEMINFO; an IPv6-only address or a kernel without them has none): every slot goes to the fallback member, where the primary routes it".into());
            }
            let _ = self.reattach(&h);
            return h.repairs - before;
        }
        // Is the program ours, and is every member where it was? All of them, or in a larger
        // group the first, the last and a window that moves on at each check.
        let n = self.members.len();
        let spots: Vec<usize> = if n <= VERIFY_PER_CHECK {
            // At least MIN_PROBES: without a program the kernel picks by a hash of the
            // 4-tuple, which lands on the expected member by chance once per member count.
            (0..n.max(MIN_PROBES)).map(|i| i % n).collect()
        } else {
            h.rotate = (h.rotate + VERIFY_PER_CHECK) % n;
            let window = (0..VERIFY_PER_CHECK).map(|i| (h.rotate + i) % n);
            [0, n - 1].into_iter().chain(window).collect()
        };
        // Foreign sockets between ours must still answer for nothing: when one leaves, the
        // kernel moves the last socket into its index.
        let agrees = |h: &Health| {
            spots.iter().all(|&m| self.lands_on(h.index[m] as usize, m))
                && h.foreign_at
                    .iter()
                    .all(|&i| self.probe(i as usize).is_none())
        };
        if !renumbered && !agrees(&h) {
            if self.reattach(&h).is_ok() && agrees(&h) {
                h.note("the group's program had been replaced or detached (SO_ATTACH_REUSEPORT_CBPF, SO_DETACH_REUSEPORT_BPF): attached again".into());
            } else {
                renumbered = true;
            }
        }
        if renumbered {
            self.measure(&mut h);
        }
        // Past the last index known, a socket not of ours answers if one joined.
        let size = n + h.foreign_at.len();
        let foreign = !h.foreign_at.is_empty() || self.probe(size).is_none();
        if foreign && !h.foreign {
            h.note("a socket of another process joined the group (the port bound with SO_REUSEPORT by the same user)".into());
        }
        h.foreign = foreign;
        // A foreign program could agree with the probes: attach ours every time anyway.
        let _ = self.reattach(&h);
        h.repairs - before
    }

    /// Undoes what code holding member `m` changed on the socket itself: it listens again if it
    /// had stopped, its backlog is set back, an unlocked socket filter is removed and a locked
    /// one detours its slot. True if it had stopped listening (the kernel's numbering changed).
    fn repair_member(&self, h: &mut Health, m: usize) -> bool {
        let mut stopped = false;
        let fd = self.members[m].as_fd();
        let who = who(m);
        let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
            .unwrap_or(true);
        if !listening {
            // Left the group (the kernel moved its last member into its index): it joins
            // again at the end; the check's probes measure the new numbering.
            let done = nix::sys::socket::listen(&fd, backlog(self.backlog));
            h.note(format!(
                "{who} had stopped listening (shutdown()): {}",
                outcome(done.map_err(io::Error::from), "it listens again")
            ));
            stopped = true;
        }
        if let Ok(info) = tcp_info(fd) {
            if info.tcpi_sacked != h.max_backlog[m] && listening {
                let done = nix::sys::socket::listen(&fd, backlog(self.backlog));
                let restored = format!("set back to {}", h.max_backlog[m]);
                h.note(format!(
                    "{who}'s backlog had been set to {} (listen()): {}",
                    info.tcpi_sacked,
                    outcome(done.map_err(io::Error::from), &restored)
                ));
            }
        }
        if filter_len(fd).unwrap_or(0) > 0 {
            let locked = get_int(fd, libc::SOL_SOCKET, SO_LOCK_FILTER).unwrap_or(0) != 0;
            if !locked {
                let done = set_int(fd, libc::SOL_SOCKET, SO_DETACH_FILTER, 0);
                h.note(format!(
                    "{who} carried a socket filter (SO_ATTACH_FILTER): {}",
                    outcome(done, "removed")
                ));
            } else if m != FALLBACK_MEMBER && !h.detoured[m - 1] {
                h.detoured[m - 1] = true;
                // The program attached at the end of the check applies the detour.
                h.note(format!("{who} carries a socket filter locked with SO_LOCK_FILTER, which no one can remove: its clients go to the fallback member, where the primary routes them"));
            }
        }
        stopped
    }

    /// Measures every member's index in the kernel, then attaches the program for it.
    fn measure(&self, h: &mut Health) {
        let before = h.index.clone();
        let mut found: Vec<Option<u32>> = vec![None; self.members.len()];
        let mut foreign_at = Vec::new();
        let mut index = 0usize;
        // Every index below the group's size is a real one: probe upwards until each member
        // is found. Indices of foreign sockets answer with no member of ours.
        while found.iter().any(Option::is_none)
            && foreign_at.len() < MAX_FOREIGN
            && probe_source(index).is_some()
        {
            match self.probe(index) {
                Some(m) if found[m].is_none() => found[m] = Some(index as u32),
                // Counted twice: a drop that was not the probe's; measured again next time.
                Some(_) => break,
                None => foreign_at.push(index as u32),
            }
            index += 1;
        }
        match found.into_iter().collect::<Option<Vec<u32>>>() {
            Some(index) => {
                h.unknown_order = false;
                h.index = index;
                h.foreign_at = foreign_at;
            }
            None => h.unknown_order = true,
        }
        let done = self.reattach(h);
        let what = if h.unknown_order {
            "could not be measured: every slot goes to the fallback member, where the primary routes it".to_owned()
        } else if h.index == before {
            return;
        } else {
            format!(
                "had changed (a socket left the group and joined again): measured, {}",
                outcome(done, "the program follows it")
            )
        };
        h.note(format!(
            "the kernel's numbering of the group's sockets {what}"
        ));
    }

    /// Attaches the program for the numbering and the detours `h` knows.
    fn reattach(&self, h: &Health) -> io::Result<()> {
        let fallback = h.index[FALLBACK_MEMBER];
        let table: Vec<u32> = (0..self.slots())
            .map(|s| {
                if h.unknown_order || h.detoured[s] {
                    fallback
                } else {
                    h.index[slot_member(s)]
                }
            })
            .collect();
        let prog = steering(self.family, self.hash, self.slots(), &table)?;
        attach(self.fallback(), &prog)
    }

    /// Whether a probe SYN to kernel index `index` is counted by member `m`. Reads only `m`'s
    /// counter unless the SYN is not counted there at once.
    fn lands_on(&self, index: usize, m: usize) -> bool {
        let fd = self.members[m].as_fd();
        let before = drops(fd);
        let Some(_probe) = self.send_probe(index) else {
            return false;
        };
        if drops(fd) != before {
            return true;
        }
        // Not yet, or elsewhere: the slow path reads every member.
        self.probe_counted(&self.counts_except(m, before), std::time::Instant::now()) == Some(m)
    }

    /// Every member's drop counter, with `m`'s as it was before the probe.
    fn counts_except(&self, m: usize, before: u32) -> Vec<u32> {
        let mut counts: Vec<u32> = self.members.iter().map(|x| drops(x.as_fd())).collect();
        counts[m] = before;
        counts
    }

    /// A connecting probe socket whose SYN goes to kernel index `index` (kept open until the
    /// SYN is counted; closing it sends nothing).
    fn send_probe(&self, index: usize) -> Option<Socket> {
        let target = probe_target(self.local)?;
        let source = probe_source(index)?;
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
        socket.set_nonblocking(true).ok()?;
        set_md5_key(socket.as_fd(), target).ok()?;
        socket
            .bind(&SocketAddr::new(source.into(), 0).into())
            .ok()?;
        match socket.connect(&SocketAddr::new(target.into(), self.local.port()).into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Some(socket),
            _ => None,
        }
    }

    /// Sends a probe SYN to kernel index `index` and returns which member counted it (dropped
    /// it: no member has the MD5 key it carries), or `None` (a socket not of ours, or lost).
    fn probe(&self, index: usize) -> Option<usize> {
        let before: Vec<u32> = self.members.iter().map(|m| drops(m.as_fd())).collect();
        let _probe = self.send_probe(index)?;
        self.probe_counted(&before, std::time::Instant::now())
    }

    /// The one member whose drop counter moved from `before`, waiting at most [`PROBE_WAIT`].
    fn probe_counted(&self, before: &[u32], started: std::time::Instant) -> Option<usize> {
        loop {
            let grew: Vec<usize> = self
                .members
                .iter()
                .zip(before)
                .enumerate()
                .filter(|(_, (m, &was))| drops(m.as_fd()) != was)
                .map(|(i, _)| i)
                .collect();
            // Two members that dropped something at once: one was not the probe (a full
            // accept queue drops too); no answer rather than a wrong one.
            match grew.as_slice() {
                [one] => return Some(*one),
                [] if started.elapsed() < PROBE_WAIT => std::thread::yield_now(),
                _ => return None,
            }
        }
    }
}

impl Health {
    /// Counts a repair and keeps what it says.
    fn note(&mut self, what: String) {
        self.repairs += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(what);
    }
}

/// How the checks name member `m`.
fn who(m: usize) -> String {
    if m == FALLBACK_MEMBER {
        "the fallback socket".into()
    } else {
        format!("slot {}'s socket", m - 1)
    }
}

/// "done" or why not.
fn outcome(result: io::Result<()>, done: &str) -> String {
    match result {
        Ok(()) => done.to_owned(),
        Err(e) => format!("could not be repaired ({e})"),
    }
}

/// Where probes connect: the loopback address for a wildcard, or the bound IPv4 address; none
/// for an IPv6 address (probes are IPv4).
fn probe_target(local: SocketAddr) -> Option<Ipv4Addr> {
    match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => Some(Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => Some(Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// `ret #FALLBACK_MEMBER`.
fn to_fallback() -> Insn {
    Insn {
        code: op::RET | op::K,
        jt: 0,
        jf: 0,
        k: FALLBACK_MEMBER as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::program::MAX_SLOTS;
    use crate::key::address::AddressText;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use socket2::SockRef;
    use std::collections::{HashMap, HashSet};
    use std::net::IpAddr;

    const SLOT_COUNTS: [usize; 7] = [1, 2, 3, 4, 7, 10, 16];
    const SOURCES: usize = 300;
    const BATCH: usize = 100;
    /// A full accept queue drops SYNs and the client retries for minutes: fail instead.
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// Distinct loopback sources, fixed per run: octets of one, two and three digits.
    fn sources(count: usize, seed: u64) -> Vec<Ipv4Addr> {
        let mut state = seed | 1;
        let mut seen = HashSet::new();
        let mut out = vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 1, 2, 3)];
        seen.extend(out.iter().copied());
        while out.len() < count {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let [_, x, y, z, ..] = state.to_le_bytes();
            let ip = Ipv4Addr::new(127, x, y, z.clamp(1, 254));
            if seen.insert(ip) {
                out.push(ip);
            }
        }
        out
    }

    /// Waits for `count` connections across the members; returns the member that accepted each
    /// peer address.
    fn accept_all(group: &Group, count: usize) -> io::Result<HashMap<IpAddr, usize>> {
        let mut accepted = HashMap::new();
        while accepted.len() < count {
            let mut fds: Vec<PollFd<'_>> = group
                .members
                .iter()
                .map(|m| PollFd::new(m.as_fd(), PollFlags::POLLIN))
                .collect();
            let ready = poll(&mut fds, PollTimeout::from(5000u16))?;
            if ready == 0 {
                return Err(io::Error::other(format!(
                    "{} of {count} connections never reached a member",
                    count - accepted.len()
                )));
            }
            for (member, fd) in group.members.iter().enumerate() {
                loop {
                    match SockRef::from(fd).accept() {
                        Ok((_conn, peer)) => {
                            let peer = peer
                                .as_socket()
                                .ok_or_else(|| io::Error::other("peer without an IP"))?;
                            let previous = accepted.insert(peer.ip(), member);
                            assert_eq!(previous, None, "{peer} accepted twice");
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(accepted)
    }

    /// Connects from every source to `target`, and checks that each connection is accepted by
    /// the member serving `hash(text) % slots`, where `text` is what Node shows for the source.
    fn check_routing(
        group: &Group,
        target: SocketAddr,
        clients: &[IpAddr],
        hash: Hash,
        text_of: impl Fn(IpAddr) -> String,
    ) -> io::Result<()> {
        check_routing_detoured(group, target, clients, hash, text_of, &[])
    }

    /// [`check_routing`] where the `detoured` slots are served by the fallback member.
    fn check_routing_detoured(
        group: &Group,
        target: SocketAddr,
        clients: &[IpAddr],
        hash: Hash,
        text_of: impl Fn(IpAddr) -> String,
        detoured: &[usize],
    ) -> io::Result<()> {
        let slots = group.slots();
        for batch in clients.chunks(BATCH) {
            let mut open = Vec::with_capacity(batch.len());
            for &source in batch {
                let client = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
                client.bind(&SocketAddr::new(source, 0).into())?;
                client.connect_timeout(&target.into(), CONNECT_TIMEOUT)?;
                open.push(client);
            }
            let accepted = accept_all(group, batch.len())?;
            for &source in batch {
                let peer = match (source, group.family) {
                    (IpAddr::V4(v4), Family::V6) => IpAddr::V6(v4.to_ipv6_mapped()),
                    _ => source,
                };
                let text = text_of(source);
                let slot = hash.of(text.as_bytes()) as usize % slots;
                let want = if detoured.contains(&slot) {
                    FALLBACK_MEMBER
                } else {
                    slot_member(slot)
                };
                assert_eq!(
                    accepted.get(&peer),
                    Some(&want),
                    "{text} with {slots} slots ({hash:?})"
                );
                // The reference formatter agrees on the text.
                assert_eq!(AddressText::from_ip(&peer).as_str(), text);
            }
        }
        Ok(())
    }

    fn v4_clients(seed: u64) -> Vec<IpAddr> {
        sources(SOURCES, seed).into_iter().map(IpAddr::V4).collect()
    }

    #[test]
    fn ipv4_listener_routes_by_djb2() -> io::Result<()> {
        for (n, &slots) in SLOT_COUNTS.iter().enumerate() {
            for hash in [Hash::Djb2, Hash::Djb2Mix] {
                let group = Group::bind(addr("127.0.0.1:0"), slots, hash, 1024)?;
                assert_eq!(group.family, Family::V4);
                assert_eq!(group.members.len(), slots + 1);
                let clients = v4_clients(n as u64 * 2 + 1 + hash as u64);
                check_routing(&group, group.local, &clients, hash, |ip| ip.to_string())?;
            }
        }
        Ok(())
    }

    #[test]
    fn dual_stack_listener_routes_by_djb2() -> io::Result<()> {
        for (n, &slots) in SLOT_COUNTS.iter().enumerate() {
            for hash in [Hash::Djb2, Hash::Djb2Mix] {
                let group = Group::bind(addr("[::]:0"), slots, hash, 1024)?;
                assert_eq!(group.family, Family::V6);
                let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), group.local.port());
                let clients = v4_clients(n as u64 * 2 + 100 + hash as u64);
                check_routing(&group, target, &clients, hash, |ip| format!("::ffff:{ip}"))?;
                let v6_target = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), target.port());
                check_routing(
                    &group,
                    v6_target,
                    &[Ipv6Addr::LOCALHOST.into()],
                    hash,
                    |_| "::1".to_owned(),
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn a_busy_port_is_refused() -> io::Result<()> {
        let first = Group::bind(addr("127.0.0.1:0"), 2, Hash::Djb2, 64)?;
        let err = Group::bind(first.local, 2, Hash::Djb2, 16).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EADDRINUSE));
        // A dual-stack group on the same port conflicts too.
        let wildcard = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), first.local.port());
        let err = Group::bind(wildcard, 2, Hash::Djb2, 16).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EADDRINUSE));
        // So does an ordinary listener, as the router binds it.
        let plain = crate::router::listener::bind(addr("127.0.0.1:0"), 16)?;
        let taken = plain
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("no address"))?;
        let err = Group::bind(taken, 1, Hash::Djb2, 16).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EADDRINUSE));
        // The first group still works after the refusals.
        let clients = v4_clients(7)[..20].to_vec();
        check_routing(&first, first.local, &clients, Hash::Djb2, |ip| {
            ip.to_string()
        })
    }

    #[test]
    fn a_forming_group_sends_everything_to_the_fallback() -> io::Result<()> {
        let group = Group::form(addr("127.0.0.1:0"), 4, 64)?;
        let clients = v4_clients(11)[..40].to_vec();
        check_all_to_fallback(&group, &clients)?;
        let steer = program(Family::V4, Hash::Djb2, 4)?;
        attach(group.fallback(), &steer)?;
        let clients = v4_clients(12)[..40].to_vec();
        check_routing(&group, group.local, &clients, Hash::Djb2, |ip| {
            ip.to_string()
        })
    }

    fn check_all_to_fallback(group: &Group, clients: &[IpAddr]) -> io::Result<()> {
        let mut open = Vec::new();
        for &source in clients {
            let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            client.bind(&SocketAddr::new(source, 0).into())?;
            client.connect_timeout(&group.local.into(), CONNECT_TIMEOUT)?;
            open.push(client);
        }
        let accepted = accept_all(group, clients.len())?;
        assert!(
            accepted.values().all(|&m| m == FALLBACK_MEMBER),
            "{accepted:?}"
        );
        Ok(())
    }

    #[test]
    fn slot_counts_out_of_range_are_refused() {
        for slots in [0, MAX_SLOTS + 1] {
            let err = Group::bind(addr("127.0.0.1:0"), slots, Hash::Djb2, 16).err();
            assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        }
    }

    #[test]
    fn queued_counts_connections_waiting_for_a_worker() -> io::Result<()> {
        let group = Group::bind(addr("127.0.0.1:0"), 1, Hash::Djb2, 64)?;
        let mut open = Vec::new();
        for source in sources(5, 3) {
            let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            client.bind(&SocketAddr::new(source.into(), 0).into())?;
            client.connect_timeout(&group.local.into(), CONNECT_TIMEOUT)?;
            open.push(client);
        }
        let member = slot_member(0);
        let mut fds = [PollFd::new(
            group.members[member].as_fd(),
            PollFlags::POLLIN,
        )];
        poll(&mut fds, PollTimeout::from(5000u16))?;
        assert_eq!(group.queued(member)?, 5);
        assert_eq!(group.queued(FALLBACK_MEMBER)?, 0);
        assert_eq!(
            group.slot(0).map(|fd| fd.as_raw_fd()),
            Some(group.members[member].as_raw_fd())
        );
        assert!(group.slot(1).is_none());
        assert_eq!(group.fallback().as_raw_fd(), group.members[0].as_raw_fd());
        Ok(())
    }

    /// What code holding member `m` can do to the group, as a worker would do it on its copy.
    #[derive(Debug, Clone, Copy)]
    enum Attack {
        ForeignProgram,
        Shutdown,
        DropFilter,
        LockedFilter,
        Detach,
        ZeroBacklog,
        /// shutdown() then listen() again at once: the member moves to the end of the group.
        Rejoin,
    }

    const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

    fn attack(group: &Group, m: usize, what: Attack) -> io::Result<()> {
        let fd = group.members[m].as_fd();
        let drop_all = [Insn {
            code: op::RET | op::K,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        match what {
            Attack::ForeignProgram => attach(
                fd,
                &[Insn {
                    k: m as u32,
                    ..drop_all[0]
                }],
            ),
            Attack::Shutdown => Ok(nix::sys::socket::shutdown(
                fd.as_raw_fd(),
                nix::sys::socket::Shutdown::Read,
            )?),
            Attack::DropFilter => set_filter(fd, libc::SO_ATTACH_FILTER, &drop_all),
            Attack::LockedFilter => {
                set_filter(fd, libc::SO_ATTACH_FILTER, &drop_all)?;
                set_int(fd, libc::SOL_SOCKET, SO_LOCK_FILTER, 1)
            }
            Attack::Detach => set_int(fd, libc::SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0),
            Attack::ZeroBacklog => Ok(nix::sys::socket::listen(
                &fd,
                nix::sys::socket::Backlog::new(0)?,
            )?),
            Attack::Rejoin => {
                nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Read)?;
                Ok(nix::sys::socket::listen(&fd, backlog(64))?)
            }
        }
    }

    #[test]
    fn every_attack_through_a_member_is_repaired_by_one_check() -> io::Result<()> {
        use Attack::*;
        let attacks = [
            ForeignProgram,
            Shutdown,
            DropFilter,
            LockedFilter,
            Detach,
            ZeroBacklog,
            Rejoin,
        ];
        for (n, what) in attacks.into_iter().enumerate() {
            for slots in [1, 4] {
                let group = Group::bind(addr("127.0.0.1:0"), slots, Hash::Djb2, 64)?;
                assert_eq!(group.check(), 0, "an intact group needs nothing");
                let m = slot_member(slots / 2);
                attack(&group, m, what)?;
                let repairs = group.check();
                // The last member leaving and joining again changes nothing.
                let harmless = matches!(what, Rejoin) && m == group.members.len() - 1;
                assert!(
                    repairs > 0 || harmless,
                    "{what:?} with {slots} slots: nothing found"
                );
                let health = group.health();
                assert_eq!(health.repairs, repairs);
                let detoured: Vec<usize> = match what {
                    LockedFilter => vec![m - 1],
                    _ => Vec::new(),
                };
                assert_eq!(health.detoured, detoured, "{what:?}");
                assert_eq!(health.damage.len(), detoured.len(), "{health:?}");
                let clients = v4_clients(40 + n as u64 * 2 + slots as u64)[..60].to_vec();
                check_routing_detoured(
                    &group,
                    group.local,
                    &clients,
                    Hash::Djb2,
                    |ip| ip.to_string(),
                    &detoured,
                )?;
                // Whole again: the next check finds nothing.
                assert_eq!(group.check(), 0, "{what:?}: {:?}", group.health());
            }
        }
        Ok(())
    }

    #[test]
    fn two_members_shut_down_between_checks_are_measured() -> io::Result<()> {
        let group = Group::bind(addr("[::]:0"), 5, Hash::Djb2, 64)?;
        attack(&group, 2, Attack::Shutdown)?;
        attack(&group, 4, Attack::Rejoin)?;
        attack(&group, 1, Attack::Shutdown)?;
        assert!(group.check() > 0);
        let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), group.local.port());
        let clients = v4_clients(77)[..100].to_vec();
        check_routing(&group, target, &clients, Hash::Djb2, |ip| {
            format!("::ffff:{ip}")
        })?;
        assert_eq!(group.check(), 0);
        Ok(())
    }

    #[test]
    fn a_foreign_socket_with_its_own_program_is_noticed_and_outlived() -> io::Result<()> {
        let group = Group::bind(addr("127.0.0.1:0"), 3, Hash::Djb2, 64)?;
        let foreign = new_socket(group.local, true)?;
        foreign.bind(&group.local.into())?;
        foreign.listen(16)?;
        let its_index = group.members.len() as u32;
        attach(
            foreign.as_fd(),
            &[Insn {
                code: op::RET | op::K,
                jt: 0,
                jf: 0,
                k: its_index,
            }],
        )?;
        // One of ours leaves and comes back while it is there: the numbering changes under it.
        attack(&group, 2, Attack::Rejoin)?;
        assert!(group.check() > 0);
        assert!(!group.health().damage.is_empty(), "{:?}", group.health());
        let clients = v4_clients(91)[..60].to_vec();
        check_routing(&group, group.local, &clients, Hash::Djb2, |ip| {
            ip.to_string()
        })?;
        // It leaves: the kernel moves the last member into its index.
        drop(foreign);
        group.check();
        assert_eq!(group.health().damage, Vec::<String>::new());
        let clients = v4_clients(92)[..60].to_vec();
        check_routing(&group, group.local, &clients, Hash::Djb2, |ip| {
            ip.to_string()
        })
    }

    #[test]
    fn an_ipv6_address_that_cannot_be_probed_detours_every_slot_once_renumbered() -> io::Result<()>
    {
        let group = Group::bind(addr("[::1]:0"), 3, Hash::Djb2, 64)?;
        let local = group.local;
        let text = |_| "::1".to_owned();
        // A foreign program is undone blindly: the program is attached at every check.
        attack(&group, 2, Attack::ForeignProgram)?;
        group.check();
        check_routing(
            &group,
            local,
            &[Ipv6Addr::LOCALHOST.into()],
            Hash::Djb2,
            text,
        )?;
        assert_eq!(group.health().damage, Vec::<String>::new());
        // A member that left and came back: the numbering is unknown, the router takes all.
        attack(&group, 1, Attack::Shutdown)?;
        assert!(group.check() > 0);
        assert_eq!(group.health().damage.len(), 1, "{:?}", group.health());
        check_routing_detoured(
            &group,
            local,
            &[Ipv6Addr::LOCALHOST.into()],
            Hash::Djb2,
            text,
            &[0, 1, 2],
        )
    }

    #[test]
    fn a_check_costs_little() -> io::Result<()> {
        for slots in [2, 16, 64, 1024] {
            let group = Group::bind(addr("127.0.0.1:0"), slots, Hash::Djb2, 64)?;
            let rounds = if slots > 64 { 10 } else { 100 };
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                group.check();
            }
            let each = started.elapsed() / rounds;
            println!("{slots} slots: one check of an intact group takes {each:?}");
            // Debug builds are several times slower than the addon's release build.
            assert!(
                each < std::time::Duration::from_millis(if slots > 64 { 100 } else { 20 }),
                "{each:?}"
            );
        }
        Ok(())
    }
}
