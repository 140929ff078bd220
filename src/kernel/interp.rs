//! A classic-BPF interpreter for the tests: runs a program on a packet the way the kernel runs a
//! `SO_ATTACH_REUSEPORT_CBPF` program on a SYN (data pointer past the TCP header, so the network
//! header is only reachable at `NET_OFF + n`).

use super::asm::{op, Insn, MEM_WORDS, NET_OFF};

/// Runs `prog` on a packet whose network header is `net` and whose payload is empty (a SYN).
/// A load outside the packet ends the program with 0, as in the kernel. Panics on instructions
/// the kernel would refuse: the programs under test must be valid.
pub(crate) fn run(prog: &[Insn], net: &[u8]) -> u32 {
    run_counted(prog, net).0
}

/// [`run`], also returning how many instructions ran.
pub(crate) fn run_counted(prog: &[Insn], net: &[u8]) -> (u32, usize) {
    let mut steps = 0;
    let result = run_steps(prog, net, &mut steps);
    (result, steps)
}

fn run_steps(prog: &[Insn], net: &[u8], steps: &mut usize) -> u32 {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; MEM_WORDS as usize];
    let mut pc = 0usize;
    let load = |k: u32, size: usize| -> Option<u32> {
        let offset = i64::from(k as i32) - i64::from(NET_OFF);
        let start = usize::try_from(offset).ok()?;
        if (k as i32) >= 0 {
            return None; // the payload of a SYN is empty
        }
        let bytes = net.get(start..start + size)?;
        Some(bytes.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b)))
    };
    loop {
        let insn = prog[pc];
        pc += 1;
        *steps += 1;
        let src = if insn.code & op::X != 0 { x } else { insn.k };
        match insn.code & 0x07 {
            op::LD | op::LDX => {
                let size = match insn.code & 0x18 {
                    op::W => 4,
                    op::H => 2,
                    _ => 1,
                };
                let value = match insn.code & 0xe0 {
                    op::IMM => insn.k,
                    op::MEM => mem[insn.k as usize],
                    op::LEN => net.len() as u32,
                    op::ABS => match load(insn.k, size) {
                        Some(v) => v,
                        None => return 0,
                    },
                    op::IND => match load(x.wrapping_add(insn.k), size) {
                        Some(v) => v,
                        None => return 0,
                    },
                    mode => panic!("load mode {mode:#x} at {}", pc - 1),
                };
                if insn.code & 0x07 == op::LD {
                    a = value;
                } else {
                    x = value;
                }
            }
            op::ST => mem[insn.k as usize] = a,
            op::STX => mem[insn.k as usize] = x,
            op::ALU => {
                a = match insn.code & 0xf0 {
                    op::ADD => a.wrapping_add(src),
                    op::SUB => a.wrapping_sub(src),
                    op::MUL => a.wrapping_mul(src),
                    op::DIV => a.checked_div(src).unwrap_or(0),
                    op::MOD => a.checked_rem(src).unwrap_or(0),
                    op::OR => a | src,
                    op::AND => a & src,
                    op::XOR => a ^ src,
                    op::LSH => a.checked_shl(src).unwrap_or(0),
                    op::RSH => a.checked_shr(src).unwrap_or(0),
                    op::NEG => a.wrapping_neg(),
                    alu => panic!("alu {alu:#x} at {}", pc - 1),
                }
            }
            op::JMP => {
                let taken = match insn.code & 0xf0 {
                    op::JA => {
                        pc += insn.k as usize;
                        continue;
                    }
                    op::JEQ => a == src,
                    op::JGT => a > src,
                    op::JGE => a >= src,
                    op::JSET => a & src != 0,
                    jmp => panic!("jump {jmp:#x} at {}", pc - 1),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            op::RET => {
                return if insn.code & op::RET_A != 0 {
                    a
                } else {
                    insn.k
                }
            }
            _ => {
                if insn.code & op::TXA != 0 {
                    a = x;
                } else {
                    x = a;
                }
            }
        }
    }
}
