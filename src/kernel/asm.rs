//! A small classic-BPF assembler with labels.
//!
//! Jumps name labels instead of counting instructions. A conditional jump can only skip 255
//! instructions (its offsets are bytes); when a target is farther, the assembler puts an
//! unconditional `ja` (32-bit offset) right after the condition and points that branch at it, so
//! the other branch does not pay for it. [`verify`] then applies the kernel's own checks
//! (`bpf_check_classic`) so a bad program fails here with a reason instead of `EINVAL`.

use std::fmt;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    /// Class, size/operation, mode/source bits (see [`op`]).
    pub code: u16,
    /// Conditional jumps: instructions to skip when the condition holds.
    pub jt: u8,
    /// Conditional jumps: instructions to skip when it does not.
    pub jf: u8,
    /// The constant operand (offset, immediate, memory cell or `ja` distance).
    pub k: u32,
}

/// Opcode bits of `linux/bpf_common.h` (here so that the assembler builds on every OS).
pub(crate) mod op {
    /// Load into A.
    pub(crate) const LD: u16 = 0x00;
    /// Load into X.
    pub(crate) const LDX: u16 = 0x01;
    /// Store A into a memory cell.
    pub(crate) const ST: u16 = 0x02;
    /// Store X into a memory cell.
    pub(crate) const STX: u16 = 0x03;
    /// Arithmetic on A.
    pub(crate) const ALU: u16 = 0x04;
    /// Jumps.
    pub(crate) const JMP: u16 = 0x05;
    /// Return.
    pub(crate) const RET: u16 = 0x06;
    /// `tax` / `txa`.
    pub(crate) const MISC: u16 = 0x07;
    /// Word (32-bit) load.
    pub(crate) const W: u16 = 0x00;
    /// Half-word (16-bit) load.
    pub(crate) const H: u16 = 0x08;
    /// Byte load.
    pub(crate) const B: u16 = 0x10;
    /// Immediate operand.
    pub(crate) const IMM: u16 = 0x00;
    /// Packet load at an absolute offset.
    pub(crate) const ABS: u16 = 0x20;
    /// Packet load at X + k.
    pub(crate) const IND: u16 = 0x40;
    /// Memory cell.
    pub(crate) const MEM: u16 = 0x60;
    /// Packet length.
    pub(crate) const LEN: u16 = 0x80;
    /// `ldx 4*([k]&0xf)`.
    pub(crate) const MSH: u16 = 0xa0;
    /// A + operand.
    pub(crate) const ADD: u16 = 0x00;
    /// A - operand.
    pub(crate) const SUB: u16 = 0x10;
    /// A * operand (32-bit, wrapping).
    pub(crate) const MUL: u16 = 0x20;
    /// A / operand (unsigned).
    pub(crate) const DIV: u16 = 0x30;
    /// A | operand.
    pub(crate) const OR: u16 = 0x40;
    /// A & operand.
    pub(crate) const AND: u16 = 0x50;
    /// A << operand.
    pub(crate) const LSH: u16 = 0x60;
    /// A >> operand.
    pub(crate) const RSH: u16 = 0x70;
    /// -A.
    pub(crate) const NEG: u16 = 0x80;
    /// A % operand (unsigned).
    pub(crate) const MOD: u16 = 0x90;
    /// A ^ operand.
    pub(crate) const XOR: u16 = 0xa0;
    /// Unconditional jump.
    pub(crate) const JA: u16 = 0x00;
    /// Jump if A == operand.
    pub(crate) const JEQ: u16 = 0x10;
    /// Jump if A > operand (unsigned).
    pub(crate) const JGT: u16 = 0x20;
    /// Jump if A >= operand (unsigned).
    pub(crate) const JGE: u16 = 0x30;
    /// Jump if A & operand != 0.
    pub(crate) const JSET: u16 = 0x40;
    /// The operand is k.
    pub(crate) const K: u16 = 0x00;
    /// The operand is X.
    pub(crate) const X: u16 = 0x08;
    /// `ret a` (return A rather than k).
    pub(crate) const RET_A: u16 = 0x10;
    /// `tax`.
    pub(crate) const TAX: u16 = 0x00;
    /// `txa`.
    pub(crate) const TXA: u16 = 0x80;
}

/// The kernel's limit on a classic program (`BPF_MAXINSNS`).
pub(crate) const MAX_INSNS: usize = 4096;
/// Scratch memory cells M[0..16] (`BPF_MEMWORDS`).
pub(crate) const MEM_WORDS: u32 = 16;
/// Packet loads at `NET_OFF + n` read byte n of the network (IP) header (`SKF_NET_OFF`).
pub(crate) const NET_OFF: i32 = -0x10_0000;

/// A jump target, bound to a position with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// Where one branch of a conditional jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The instruction that follows the jump.
    Next,
    /// A label bound later in the program.
    To(Label),
}

/// Why a program could not be assembled or would be refused by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsmError {
    /// A label was used but never bound.
    Unbound(usize),
    /// A label was bound twice.
    BoundTwice(usize),
    /// A jump to a label bound at or before it (classic BPF only jumps forward).
    Backward {
        /// Position of the jump.
        pc: usize,
    },
    /// More instructions than the kernel accepts.
    TooLong(usize),
    /// An instruction the kernel's checker refuses.
    Invalid {
        /// Position of the instruction.
        pc: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsmError::Unbound(l) => write!(f, "BPF label {l} is never bound"),
            AsmError::BoundTwice(l) => write!(f, "BPF label {l} is bound twice"),
            AsmError::Backward { pc } => write!(f, "BPF jump at {pc} goes backwards"),
            AsmError::TooLong(n) => {
                write!(f, "BPF program has {n} instructions (limit {MAX_INSNS})")
            }
            AsmError::Invalid { pc, reason } => write!(f, "BPF instruction {pc}: {reason}"),
        }
    }
}

impl std::error::Error for AsmError {}

#[derive(Debug)]
enum Item {
    Plain(Insn),
    Ja(Label),
    Cond {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Bind(Label),
}

/// Builds a program from instructions and labels; [`Asm::assemble`] resolves the jumps.
#[derive(Debug, Default)]
pub(crate) struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    /// An empty program.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A fresh label, to be bound once with [`Asm::bind`].
    pub(crate) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Binds `label` to the next instruction.
    pub(crate) fn bind(&mut self, label: Label) {
        self.items.push(Item::Bind(label));
    }

    /// Any instruction without jump targets.
    pub(crate) fn insn(&mut self, code: u16, k: u32) {
        self.items.push(Item::Plain(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }

    /// `ja label`.
    pub(crate) fn ja(&mut self, label: Label) {
        self.items.push(Item::Ja(label));
    }

    /// A conditional jump: `code` is `op::JMP | op::JEQ/JGT/JGE/JSET | op::K/X`.
    pub(crate) fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.items.push(Item::Cond { code, k, jt, jf });
    }

    /// `jeq #k, jt, jf`.
    pub(crate) fn jeq(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JMP | op::JEQ | op::K, k, jt, jf);
    }

    /// `jge #k, jt, jf` (unsigned).
    pub(crate) fn jge(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JMP | op::JGE | op::K, k, jt, jf);
    }

    /// `jgt #k, jt, jf` (unsigned).
    pub(crate) fn jgt(&mut self, k: u32, jt: Target, jf: Target) {
        self.jump(op::JMP | op::JGT | op::K, k, jt, jf);
    }

    /// `jgt x, jt, jf` (unsigned A > X).
    pub(crate) fn jgt_x(&mut self, jt: Target, jf: Target) {
        self.jump(op::JMP | op::JGT | op::X, 0, jt, jf);
    }

    /// `ld #k`.
    pub(crate) fn ld_imm(&mut self, k: u32) {
        self.insn(op::LD | op::W | op::IMM, k);
    }

    /// `ld M[cell]`.
    pub(crate) fn ld_mem(&mut self, cell: u32) {
        self.insn(op::LD | op::W | op::MEM, cell);
    }

    /// `ldx M[cell]`.
    pub(crate) fn ldx_mem(&mut self, cell: u32) {
        self.insn(op::LDX | op::W | op::MEM, cell);
    }

    /// `ldb [NET_OFF + offset]`: a byte of the network header.
    pub(crate) fn ldb_net(&mut self, offset: u32) {
        self.insn(op::LD | op::B | op::ABS, net(offset));
    }

    /// `ldh [NET_OFF + offset]`: a big-endian half-word of the network header.
    pub(crate) fn ldh_net(&mut self, offset: u32) {
        self.insn(op::LD | op::H | op::ABS, net(offset));
    }

    /// `st M[cell]`.
    pub(crate) fn st(&mut self, cell: u32) {
        self.insn(op::ST, cell);
    }

    /// `<alu> #k`, e.g. `alu(op::MUL, 33)`.
    pub(crate) fn alu(&mut self, alu_op: u16, k: u32) {
        self.insn(op::ALU | alu_op | op::K, k);
    }

    /// `<alu> x`, e.g. `alu_x(op::XOR)`.
    pub(crate) fn alu_x(&mut self, alu_op: u16) {
        self.insn(op::ALU | alu_op | op::X, 0);
    }

    /// `tax`: X = A.
    pub(crate) fn tax(&mut self) {
        self.insn(op::MISC | op::TAX, 0);
    }

    /// `ret #k`.
    pub(crate) fn ret_k(&mut self, k: u32) {
        self.insn(op::RET | op::K, k);
    }

    /// `ret a`.
    pub(crate) fn ret_a(&mut self) {
        self.insn(op::RET | op::RET_A, 0);
    }

    /// Resolves labels (adding a `ja` trampoline for every branch that cannot reach its target)
    /// and checks the result as the kernel would.
    pub(crate) fn assemble(self) -> Result<Vec<Insn>, AsmError> {
        let mut bound_at = vec![None; self.labels];
        for (index, item) in self.items.iter().enumerate() {
            if let Item::Bind(Label(l)) = *item {
                if bound_at[l].replace(index).is_some() {
                    return Err(AsmError::BoundTwice(l));
                }
            }
        }
        // Trampolines only ever get added, so this reaches a fixed point.
        let mut far = vec![(false, false); self.items.len()];
        loop {
            let (pcs, label_pc) = self.layout(&far, &bound_at)?;
            let mut grew = false;
            for (index, item) in self.items.iter().enumerate() {
                if let Item::Cond { jt, jf, .. } = *item {
                    let pc = pcs[index];
                    let (t_far, f_far) = far[index];
                    let next = pc + 1 + usize::from(t_far) + usize::from(f_far);
                    let too_far = |branch| -> Result<bool, AsmError> {
                        let target = resolve(branch, next, &label_pc);
                        if target <= pc {
                            return Err(AsmError::Backward { pc });
                        }
                        Ok(target - (pc + 1) > usize::from(u8::MAX))
                    };
                    let needs = (t_far || too_far(jt)?, f_far || too_far(jf)?);
                    grew |= needs != far[index];
                    far[index] = needs;
                }
            }
            if !grew {
                return self.emit(&far, &pcs, &label_pc);
            }
        }
    }

    /// The position of every item, and of every label, for the given trampolines.
    fn layout(
        &self,
        far: &[(bool, bool)],
        bound_at: &[Option<usize>],
    ) -> Result<(Vec<usize>, Vec<usize>), AsmError> {
        let mut pcs = Vec::with_capacity(self.items.len());
        let mut pc = 0;
        for (index, item) in self.items.iter().enumerate() {
            pcs.push(pc);
            pc += match item {
                Item::Bind(_) => 0,
                Item::Plain(_) | Item::Ja(_) => 1,
                Item::Cond { .. } => 1 + usize::from(far[index].0) + usize::from(far[index].1),
            };
        }
        if pc > MAX_INSNS {
            return Err(AsmError::TooLong(pc));
        }
        let label_pc = bound_at
            .iter()
            .enumerate()
            .map(|(l, at)| at.map(|index| pcs[index]).ok_or(AsmError::Unbound(l)))
            .collect::<Result<_, _>>()?;
        Ok((pcs, label_pc))
    }

    fn emit(
        &self,
        far: &[(bool, bool)],
        pcs: &[usize],
        label_pc: &[usize],
    ) -> Result<Vec<Insn>, AsmError> {
        let ja = |from: usize, to: usize| -> Result<Insn, AsmError> {
            if to <= from {
                return Err(AsmError::Backward { pc: from });
            }
            Ok(Insn {
                code: op::JMP | op::JA,
                jt: 0,
                jf: 0,
                k: u32::try_from(to - from - 1).map_err(|_| AsmError::TooLong(to))?,
            })
        };
        let mut out = Vec::with_capacity(MAX_INSNS);
        for (index, item) in self.items.iter().enumerate() {
            let pc = pcs[index];
            match *item {
                Item::Bind(_) => {}
                Item::Plain(insn) => out.push(insn),
                Item::Ja(Label(l)) => out.push(ja(pc, label_pc[l])?),
                Item::Cond { code, k, jt, jf } => {
                    let (t_far, f_far) = far[index];
                    let next = pc + 1 + usize::from(t_far) + usize::from(f_far);
                    // A far branch lands on its trampoline: jt's right after the jump, then jf's.
                    let t_tramp = pc + 1;
                    let f_tramp = pc + 1 + usize::from(t_far);
                    let offset = |branch, is_far, tramp| -> Result<u8, AsmError> {
                        let to = if is_far {
                            tramp
                        } else {
                            resolve(branch, next, label_pc)
                        };
                        u8::try_from(to - (pc + 1)).map_err(|_| AsmError::Invalid {
                            pc,
                            reason: "jump out of range",
                        })
                    };
                    out.push(Insn {
                        code,
                        jt: offset(jt, t_far, t_tramp)?,
                        jf: offset(jf, f_far, f_tramp)?,
                        k,
                    });
                    if t_far {
                        out.push(ja(t_tramp, resolve(jt, next, label_pc))?);
                    }
                    if f_far {
                        out.push(ja(f_tramp, resolve(jf, next, label_pc))?);
                    }
                }
            }
        }
        verify(&out)?;
        Ok(out)
    }
}

fn resolve(target: Target, next: usize, label_pc: &[usize]) -> usize {
    match target {
        Target::Next => next,
        Target::To(Label(l)) => label_pc[l],
    }
}

/// The 32-bit `k` that addresses byte `offset` of the network header.
fn net(offset: u32) -> u32 {
    // Two's complement: the kernel reads k as a signed offset.
    (NET_OFF as u32).wrapping_add(offset)
}

/// The checks of the kernel's `bpf_check_classic`: only the opcodes it accepts, jumps inside the
/// program, memory cells in range and written before they are read on every path, no division
/// by a constant zero or shift by 32 or more, a `ret` at the end.
pub(crate) fn verify(prog: &[Insn]) -> Result<(), AsmError> {
    use op::*;
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return Err(AsmError::TooLong(prog.len()));
    }
    let invalid = |pc, reason| Err(AsmError::Invalid { pc, reason });
    // One bit per memory cell known to be written, as the kernel's check_load_and_stores.
    let mut written_at = vec![u16::MAX; prog.len()];
    let mut written: u16 = 0;
    for (pc, insn) in prog.iter().enumerate() {
        written &= written_at[pc];
        let remaining = prog.len() - pc - 1;
        let Insn { code, jt, jf, k } = *insn;
        let alu_op = code & 0xf0;
        match code {
            c if c == LD | W | MEM || c == LDX | W | MEM => {
                if k >= MEM_WORDS {
                    return invalid(pc, "memory cell out of range");
                }
                if written & (1 << k) == 0 {
                    return invalid(pc, "memory cell read before it is written");
                }
            }
            ST | STX => {
                if k >= MEM_WORDS {
                    return invalid(pc, "memory cell out of range");
                }
                written |= 1 << k;
            }
            c if [
                LD | W | ABS,
                LD | H | ABS,
                LD | B | ABS,
                LD | W | IND,
                LD | H | IND,
                LD | B | IND,
                LD | W | LEN,
                LD | W | IMM,
                LDX | W | IMM,
                LDX | W | LEN,
                LDX | B | MSH,
                MISC | TAX,
                MISC | TXA,
                RET | K,
                RET | RET_A,
                ALU | NEG,
            ]
            .contains(&c) => {}
            c if c & !0xf8 == ALU
                && matches!(
                    alu_op,
                    ADD | SUB | MUL | DIV | MOD | AND | OR | XOR | LSH | RSH
                ) =>
            {
                if c & X == 0 && matches!(alu_op, DIV | MOD) && k == 0 {
                    return invalid(pc, "division by zero");
                }
                if c & X == 0 && matches!(alu_op, LSH | RSH) && k >= 32 {
                    return invalid(pc, "shift by 32 or more");
                }
            }
            c if c == JMP | JA => {
                if k as usize >= remaining {
                    return invalid(pc, "jump past the end");
                }
                written_at[pc + 1 + k as usize] &= written;
                written = u16::MAX;
            }
            c if c & !0xf8 == JMP && matches!(alu_op, JEQ | JGT | JGE | JSET) => {
                if usize::from(jt) >= remaining || usize::from(jf) >= remaining {
                    return invalid(pc, "jump past the end");
                }
                written_at[pc + 1 + usize::from(jt)] &= written;
                written_at[pc + 1 + usize::from(jf)] &= written;
                written = u16::MAX;
            }
            _ => return invalid(pc, "unknown instruction"),
        }
    }
    match prog.last() {
        Some(last) if last.code & 0x07 == RET => Ok(()),
        _ => invalid(prog.len() - 1, "the last instruction is not a return"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::interp::run;
    use super::*;

    /// `jeq #k` to a `ret #1` placed `gap` instructions later, `ret #2` otherwise.
    fn skip_over(gap: usize) -> Result<Vec<Insn>, AsmError> {
        let mut a = Asm::new();
        let one = a.label();
        a.ldb_net(0);
        a.jeq(7, Target::To(one), Target::Next);
        for _ in 0..gap {
            a.alu(op::ADD, 1);
        }
        a.ret_k(2);
        a.bind(one);
        a.ret_k(1);
        a.assemble()
    }

    #[test]
    fn near_jumps_need_no_trampoline() -> Result<(), AsmError> {
        let prog = skip_over(254)?;
        assert_eq!(prog.len(), 2 + 254 + 2);
        assert_eq!(prog[1].jt, 255);
        assert_eq!(run(&prog, &[7]), 1);
        assert_eq!(run(&prog, &[8]), 2);
        Ok(())
    }

    #[test]
    fn far_jumps_go_through_a_trampoline() -> Result<(), AsmError> {
        for gap in [255, 256, 1000, 4000] {
            let prog = skip_over(gap)?;
            assert_eq!(prog.len(), 2 + 1 + gap + 2, "gap {gap}");
            assert_eq!((prog[1].jt, prog[1].jf), (0, 1), "gap {gap}");
            assert_eq!(prog[2].code, op::JMP | op::JA);
            assert_eq!(run(&prog, &[7]), 1, "gap {gap}");
            assert_eq!(run(&prog, &[8]), 2, "gap {gap}");
        }
        Ok(())
    }

    #[test]
    fn both_branches_far() -> Result<(), AsmError> {
        let mut a = Asm::new();
        let (t, f) = (a.label(), a.label());
        a.ldb_net(0);
        a.jeq(7, Target::To(t), Target::To(f));
        for _ in 0..300 {
            a.alu(op::ADD, 1);
        }
        a.bind(f);
        a.ret_k(2);
        for _ in 0..300 {
            a.alu(op::ADD, 1);
        }
        a.bind(t);
        a.ret_k(1);
        let prog = a.assemble()?;
        assert_eq!((prog[1].jt, prog[1].jf), (0, 1));
        assert_eq!(run(&prog, &[7]), 1);
        assert_eq!(run(&prog, &[0]), 2);
        Ok(())
    }

    #[test]
    fn trampolines_that_push_other_jumps_out_of_range() -> Result<(), AsmError> {
        // Many jumps whose targets sit just inside the range until the trampolines before
        // them are added: the fixed point must move every one of them.
        let mut a = Asm::new();
        let end = a.label();
        let near = a.label();
        a.ldb_net(0);
        for i in 0..200u32 {
            a.jeq(1000 + i, Target::To(end), Target::Next);
        }
        a.jeq(7, Target::To(near), Target::Next);
        for _ in 0..254 {
            a.alu(op::ADD, 1);
        }
        a.ret_k(2);
        a.bind(near);
        a.ret_k(3);
        a.bind(end);
        a.ret_k(1);
        let prog = a.assemble()?;
        assert_eq!(run(&prog, &[7]), 3);
        assert_eq!(run(&prog, &[8]), 2);
        Ok(())
    }

    #[test]
    fn refuses_bad_programs() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        a.ret_k(0);
        assert_eq!(a.assemble(), Err(AsmError::Unbound(0)));

        let mut a = Asm::new();
        let l = a.label();
        a.bind(l);
        a.ld_imm(1);
        a.jeq(1, Target::To(l), Target::Next);
        a.ret_k(0);
        assert_eq!(a.assemble(), Err(AsmError::Backward { pc: 1 }));

        let mut a = Asm::new();
        a.ld_mem(3);
        a.ret_a();
        assert!(matches!(a.assemble(), Err(AsmError::Invalid { pc: 0, .. })));

        let mut a = Asm::new();
        a.ld_imm(1);
        a.alu(op::MOD, 0);
        a.ret_a();
        assert!(matches!(a.assemble(), Err(AsmError::Invalid { pc: 1, .. })));

        let mut a = Asm::new();
        a.ld_imm(1);
        assert!(matches!(a.assemble(), Err(AsmError::Invalid { pc: 0, .. })));

        let mut a = Asm::new();
        a.ld_imm(1);
        a.alu(op::RSH, 32);
        a.ret_a();
        assert!(matches!(a.assemble(), Err(AsmError::Invalid { pc: 1, .. })));

        // A half-word immediate is not an instruction the kernel knows.
        let mut a = Asm::new();
        a.insn(op::LD | op::H | op::IMM, 1);
        a.ret_a();
        assert!(matches!(a.assemble(), Err(AsmError::Invalid { pc: 0, .. })));

        let mut a = Asm::new();
        for _ in 0..MAX_INSNS {
            a.ld_imm(1);
        }
        a.ret_a();
        assert_eq!(a.assemble(), Err(AsmError::TooLong(MAX_INSNS + 1)));
    }

    #[test]
    fn a_cell_written_on_one_path_only_is_refused() {
        let mut a = Asm::new();
        let skip = a.label();
        a.ldb_net(0);
        a.jeq(1, Target::Next, Target::To(skip));
        a.st(2);
        a.bind(skip);
        a.ld_mem(2);
        a.ret_a();
        assert!(matches!(
            a.assemble(),
            Err(AsmError::Invalid {
                reason: "memory cell read before it is written",
                ..
            })
        ));
    }
}
