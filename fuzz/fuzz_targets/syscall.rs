//! Fuzzes the sandbox's system-call dispatcher: the program controls every register and all
//! of its memory, so any sequence of calls with any arguments over any memory contents must
//! be served or refused, never panic, and never touch memory outside the program's part.
//! Processes are on: a `fork` adds a process (up to the tree's limit) that later calls may
//! come from, `execve` replaces a process's image, and a process that ends leaves the tree,
//! so kill, wait and pipes between processes are fuzzed too; at the end the tree is empty but
//! for init, and every pipe end is closed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rypervisor::sandbox::host::BufferHost;
use rypervisor::sandbox::layout::{MIN_MEM, USER_BASE};
use rypervisor::sandbox::linux::sigframe::UserRegs;
use rypervisor::sandbox::linux::{Context, Next, Process, SyscallArgs, VmRequest};
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
    let mut root = Process::new(Policy::default(), USER_BASE + 0x10000, MIN_MEM, 1 << 20);
    root.set_max_procs(6);
    let tree = root.tree().clone();
    let mut procs = vec![root];
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
        // The high bits of the number pick the calling process.
        let who = (word(0) >> 32) as usize % procs.len();
        let process = &mut procs[who];
        let regs = match process.dispatch(&call, &mut cx) {
            Next::End(_) if who == 0 => break,
            Next::End(exit) => {
                let pid = process.pid();
                procs.remove(who);
                tree.exit(
                    pid,
                    if exit.status() < 128 {
                        exit.status() << 8
                    } else {
                        9
                    },
                );
                continue;
            }
            Next::Vm(VmRequest::Fork(spawn)) => {
                tree.release_vfork(spawn.pid);
                procs.push(*spawn.child);
                continue;
            }
            Next::Vm(VmRequest::Exec(e)) => {
                let interp = e.image.interp.as_ref().map(|i| (i.start, i.end));
                process.exec_into(e.image.program.end, e.image.stack_size, interp, &e.path);
                continue;
            }
            Next::SigReturn => match process.sigreturn(call.args[4], 0x202, &mut cx) {
                Ok(r) => r,
                Err(_) => break,
            },
            Next::Return(_) => regs,
        };
        if process.deliver(&regs, &mut cx).is_err() {
            if who == 0 {
                break;
            }
            let pid = process.pid();
            procs.remove(who);
            tree.exit(pid, 9);
        }
    }
    // The processes end: their descriptors close (pipes see it), then init alone remains.
    for p in procs.drain(1..) {
        let pid = p.pid();
        drop(p);
        tree.exit(pid, 9);
    }
    tree.end();
    assert_eq!(tree.len(), 1, "init alone after the end");
    // The VMM's tables (page tables, GDT, IDT, TSS, stubs) are never written by a call.
    let mut after = vec![0u8; USER_BASE as usize];
    mem.ram().read(0, &mut after).unwrap();
    assert!(
        tables_before == after,
        "a system call wrote below USER_BASE"
    );
});
