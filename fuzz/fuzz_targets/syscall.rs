//! Fuzzes the sandbox's system-call dispatcher: the program controls every register and all
//! of its memory, so any sequence of calls with any arguments over any memory contents must
//! be served or refused, never panic, and never touch memory outside the program's part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rypervisor::sandbox::host::BufferHost;
use rypervisor::sandbox::layout::{MIN_MEM, USER_BASE};
use rypervisor::sandbox::linux::sigframe::UserRegs;
use rypervisor::sandbox::linux::{Context, Next, Process, SyscallArgs};
use rypervisor::sandbox::usermem::UserMemory;
use rypervisor::sandbox::Policy;

fuzz_target!(|data: &[u8]| {
    let mut mem = UserMemory::new(MIN_MEM).unwrap();
    // The tail of the input becomes program memory (where pointers will often land).
    let split = data.len().min(7 * 8 * 16);
    let (calls, memory) = data.split_at(split);
    let _ = mem.write(
        USER_BASE,
        &memory[..memory.len().min((MIN_MEM - USER_BASE) as usize)],
    );
    let tables_before = {
        let mut b = vec![0u8; USER_BASE as usize];
        mem.ram().read(0, &mut b).unwrap();
        b
    };
    let mut process = Process::new(Policy::default(), USER_BASE + 0x10000, MIN_MEM, 1 << 20);
    let mut host = BufferHost {
        stdin: b"fuzz input".to_vec(),
        no_sleep: true,
        limit: 1 << 20,
        ..BufferHost::default()
    };
    for chunk in calls.chunks_exact(7 * 8) {
        let word = |i: usize| u64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().unwrap());
        let mut call = SyscallArgs {
            nr: word(0) % 512,
            args: [word(1), word(2), word(3), word(4), word(5), word(6)],
        };
        // Bias half the pointers into program memory so calls get past EFAULT.
        for a in call.args.iter_mut().step_by(2) {
            if *a & 1 == 1 {
                *a = USER_BASE + (*a >> 1) % (MIN_MEM - USER_BASE);
            }
        }
        let mut cx = Context {
            mem: &mut mem,
            host: &mut host,
            remaining: Some(std::time::Duration::from_millis(1)),
            vdso_clock: None,
            interrupt: None,
        };
        // The way back: rt_sigreturn reads a frame wherever RSP points; pending signals are
        // delivered onto a frame at a stack the input chooses.
        let regs = UserRegs {
            rsp: call.args[4],
            rip: call.args[5],
            rflags: 0x202,
            ..UserRegs::default()
        };
        let regs = match process.dispatch(&call, &mut cx) {
            Next::End(_) => break,
            Next::SigReturn => match process.sigreturn(call.args[4], 0x202, &mut cx) {
                Ok(r) => r,
                Err(_) => break,
            },
            Next::Return(_) => regs,
        };
        if process.deliver(&regs, &mut cx).is_err() {
            break;
        }
    }
    // The VMM's tables (page tables, GDT, IDT, TSS, stubs) are never written by a call.
    let mut after = vec![0u8; USER_BASE as usize];
    mem.ram().read(0, &mut after).unwrap();
    assert!(
        tables_before == after,
        "a system call wrote below USER_BASE"
    );
});
