//! The vDSO's functions, assembled with iced-x86 for the address they run at.
//!
//! Every function follows the System V calling convention and the kernel vDSO's contract:
//! the same arguments and results as the system call it stands for. Time comes from the
//! [time page](super::clock) with a sequence lock: read the sequence (odd: being written,
//! retry), `lfence; rdtsc`, scale the TSC ticks since the page's base, add the clock's base,
//! and retry if the sequence moved. A clock the page does not carry, or a page whose mode says
//! the TSC cannot be trusted, falls back to the real `syscall` (which the VMM serves).
//!
//! Hand-assembled because no maintained crate builds a vDSO; iced-x86 is the field's
//! assembler, so no byte of machine code is written by hand.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use super::clock::{BASE_NS, CLOCKS, MASK, MODE, MULT, OFFSETS, SEQ, TSC_BASE};

/// One exported function: its name and where it starts in the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The `__vdso_` name C libraries look up.
    pub name: &'static str,
    /// Offset in the code.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// System-call numbers of the fallbacks.
const SYS_GETTIMEOFDAY: u64 = libc::SYS_gettimeofday as u64;
const SYS_TIME: u64 = libc::SYS_time as u64;
const SYS_CLOCK_GETTIME: u64 = libc::SYS_clock_gettime as u64;
const SYS_CLOCK_GETRES: u64 = libc::SYS_clock_getres as u64;
const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Assembles the functions for code placed at `ip`, reading the time page at `vvar`.
pub fn assemble(ip: u64, vvar: u64) -> Result<(Vec<u8>, Vec<Function>), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let at = |field: u64| vvar + field;
    let mut read_ns = a.create_label();
    let mut starts = Vec::new();

    // __vdso_clock_gettime(clockid_t edi, struct timespec *rsi)
    let mut cgt = a.create_label();
    let mut cgt_fallback = a.create_label();
    a.set_label(&mut cgt)?;
    a.call(read_ns)?;
    a.test(ecx, ecx)?;
    a.jnz(cgt_fallback)?;
    a.xor(edx, edx)?;
    a.mov(rcx, NSEC_PER_SEC)?;
    a.div(rcx)?;
    a.mov(qword_ptr(rsi), rax)?;
    a.mov(qword_ptr(rsi + 8), rdx)?;
    a.xor(eax, eax)?;
    a.ret()?;
    a.set_label(&mut cgt_fallback)?;
    a.mov(eax, SYS_CLOCK_GETTIME as u32)?;
    a.syscall()?;
    a.ret()?;
    starts.push(("__vdso_clock_gettime", cgt));

    // __vdso_gettimeofday(struct timeval *rdi, struct timezone *rsi): UTC, no time zone.
    let mut gtod = a.create_label();
    let mut gtod_fallback = a.create_label();
    let mut no_tz = a.create_label();
    let mut no_tv = a.create_label();
    a.set_label(&mut gtod)?;
    a.mov(r10, rdi)?;
    a.mov(r11, rsi)?;
    a.xor(edi, edi)?; // CLOCK_REALTIME
    a.call(read_ns)?;
    a.test(ecx, ecx)?;
    a.jnz(gtod_fallback)?;
    a.test(r11, r11)?;
    a.jz(no_tz)?;
    a.mov(qword_ptr(r11), 0)?;
    a.set_label(&mut no_tz)?;
    a.test(r10, r10)?;
    a.jz(no_tv)?;
    a.xor(edx, edx)?;
    a.mov(rcx, NSEC_PER_SEC)?;
    a.div(rcx)?;
    a.mov(qword_ptr(r10), rax)?;
    a.mov(rax, rdx)?;
    a.xor(edx, edx)?;
    a.mov(ecx, 1000)?;
    a.div(rcx)?;
    a.mov(qword_ptr(r10 + 8), rax)?;
    a.set_label(&mut no_tv)?;
    a.xor(eax, eax)?;
    a.ret()?;
    a.set_label(&mut gtod_fallback)?;
    a.mov(rdi, r10)?;
    a.mov(rsi, r11)?;
    a.mov(eax, SYS_GETTIMEOFDAY as u32)?;
    a.syscall()?;
    a.ret()?;
    starts.push(("__vdso_gettimeofday", gtod));

    // __vdso_time(time_t *rdi)
    let mut time = a.create_label();
    let mut time_fallback = a.create_label();
    let mut no_tloc = a.create_label();
    a.set_label(&mut time)?;
    a.mov(r10, rdi)?;
    a.xor(edi, edi)?;
    a.call(read_ns)?;
    a.test(ecx, ecx)?;
    a.jnz(time_fallback)?;
    a.xor(edx, edx)?;
    a.mov(rcx, NSEC_PER_SEC)?;
    a.div(rcx)?;
    a.test(r10, r10)?;
    a.jz(no_tloc)?;
    a.mov(qword_ptr(r10), rax)?;
    a.set_label(&mut no_tloc)?;
    a.ret()?;
    a.set_label(&mut time_fallback)?;
    a.mov(rdi, r10)?;
    a.mov(eax, SYS_TIME as u32)?;
    a.syscall()?;
    a.ret()?;
    starts.push(("__vdso_time", time));

    // __vdso_clock_getres(clockid_t edi, struct timespec *rsi): 1 ns for the page's clocks.
    let mut res = a.create_label();
    let mut res_fallback = a.create_label();
    let mut no_res = a.create_label();
    a.set_label(&mut res)?;
    a.cmp(edi, CLOCKS as u32)?;
    a.jae(res_fallback)?;
    a.mov(eax, dword_ptr(at(MODE)))?;
    a.test(eax, eax)?;
    a.jz(res_fallback)?;
    a.mov(eax, dword_ptr(at(MASK)))?;
    a.bt(eax, edi)?;
    a.jae(res_fallback)?; // CF clear: not carried
    a.test(rsi, rsi)?;
    a.jz(no_res)?;
    a.mov(qword_ptr(rsi), 0)?;
    a.mov(qword_ptr(rsi + 8), 1)?;
    a.set_label(&mut no_res)?;
    a.xor(eax, eax)?;
    a.ret()?;
    a.set_label(&mut res_fallback)?;
    a.mov(eax, SYS_CLOCK_GETRES as u32)?;
    a.syscall()?;
    a.ret()?;
    starts.push(("__vdso_clock_getres", res));

    // __vdso_getcpu(unsigned *rdi, unsigned *rsi, void *): one CPU, one node.
    let mut getcpu = a.create_label();
    let mut no_cpu = a.create_label();
    let mut no_node = a.create_label();
    a.set_label(&mut getcpu)?;
    a.test(rdi, rdi)?;
    a.jz(no_cpu)?;
    a.mov(dword_ptr(rdi), 0)?;
    a.set_label(&mut no_cpu)?;
    a.test(rsi, rsi)?;
    a.jz(no_node)?;
    a.mov(dword_ptr(rsi), 0)?;
    a.set_label(&mut no_node)?;
    a.xor(eax, eax)?;
    a.ret()?;
    starts.push(("__vdso_getcpu", getcpu));

    // read_ns: edi = clock → rax = nanoseconds, ecx = 0; or ecx = 1 (use the system call).
    // Clobbers rax, rcx, rdx, r8, r9; keeps rdi, rsi, r10, r11.
    let mut retry = a.create_label();
    let mut unusable = a.create_label();
    a.set_label(&mut read_ns)?;
    a.cmp(edi, CLOCKS as u32)?;
    a.jae(unusable)?;
    a.mov(eax, dword_ptr(at(MASK)))?;
    a.bt(eax, edi)?;
    a.jae(unusable)?;
    a.set_label(&mut retry)?;
    a.mov(r8d, dword_ptr(at(SEQ)))?;
    a.test(r8d, 1)?;
    a.jnz(retry)?; // being written (never for long: the VMM writes between two exits)
    a.mov(eax, dword_ptr(at(MODE)))?;
    a.test(eax, eax)?;
    a.jz(unusable)?;
    a.lfence()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.sub(rax, qword_ptr(at(TSC_BASE)))?;
    a.mul(qword_ptr(at(MULT)))?; // rdx:rax = ticks × mult (2^-32 ns per tick)
    a.shrd(rax, rdx, 32)?;
    a.add(rax, qword_ptr(at(BASE_NS)))?;
    a.mov(ecx, edi)?;
    a.mov(r9, OFFSETS + vvar)?;
    a.add(rax, qword_ptr(r9 + rcx * 8))?;
    a.cmp(r8d, dword_ptr(at(SEQ)))?;
    a.jne(retry)?;
    a.xor(ecx, ecx)?;
    a.ret()?;
    a.set_label(&mut unusable)?;
    a.mov(ecx, 1)?;
    a.ret()?;

    let result = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let code = result.inner.code_buffer.clone();
    let mut functions: Vec<Function> = starts
        .iter()
        .map(|(name, label)| {
            let addr = result.label_ip(label)?;
            Ok(Function {
                name,
                offset: addr - ip,
                size: 0,
            })
        })
        .collect::<Result<_, IcedError>>()?;
    // Each function runs to where the next begins (read_ns, the shared tail, last).
    let read_ns_at = result.label_ip(&read_ns)? - ip;
    let ends: Vec<u64> = (functions.iter().skip(1).map(|f| f.offset))
        .chain([read_ns_at])
        .collect();
    for (f, end) in functions.iter_mut().zip(ends) {
        f.size = end - f.offset;
    }
    Ok((code, functions))
}
