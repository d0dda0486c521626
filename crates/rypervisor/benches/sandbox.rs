//! Sandbox benchmarks, each next to its baseline in the same run:
//! - library: create → first system call, and reset → next system call, against a floor of
//!   the same KVM ioctls issued directly (kvm-ioctls, no sandbox layers);
//! - whole processes: hello world, a compute-bound program and a getpid loop, run natively,
//!   under `rypervisor exec`, and under qemu-user (`qemu-x86_64-static`, if installed).
//!
//! Run with `cargo bench -p rypervisor --bench sandbox`; docs/PERFORMANCE.md has the ratios.
//! The C programs are built with `gcc -static` from `tests/programs/`.

#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kvm_bindings::{kvm_regs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use object::write::elf::{FileHeader, ProgramHeader, Writer};
use object::{elf, Endianness};
use rypervisor::memory::GuestRam;
use rypervisor::sandbox::layout::{self, SYSCALL_PORT, USER_BASE};
use rypervisor::sandbox::{BufferHost, Exit, SandboxBuilder};
use support::{program, Libc};

const MEM: u64 = 8 << 20;

/// `mov eax,60; xor edi,edi; syscall` (exit(0)) as a static ELF at 0x400000.
const EXIT0: [u8; 9] = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
/// `xor eax,eax; xor edi,edi; lea rsi,[rsp-64]; mov edx,1; syscall` (read(0, buf, 1)), then
/// exit(0).
const READ_THEN_EXIT: [u8; 27] = [
    0x31, 0xc0, 0x31, 0xff, 0x48, 0x8d, 0x74, 0x24, 0xc0, 0xba, 1, 0, 0, 0, 0x0f, 0x05, //
    0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05, 0x90, 0x90,
];

fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let vaddr = 0x40_1000u64;
    let mut out = Vec::new();
    let mut w = Writer::new(Endianness::Little, true, &mut out);
    w.reserve_file_header();
    w.reserve_program_headers(1);
    let off = w.reserve(code.len(), 16);
    w.write_file_header(&FileHeader {
        os_abi: 0,
        abi_version: 0,
        e_type: elf::ET_EXEC,
        e_machine: elf::EM_X86_64,
        e_entry: vaddr,
        e_flags: 0,
    })
    .unwrap();
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_LOAD,
        p_flags: elf::PF_R | elf::PF_X,
        p_offset: off as u64,
        p_vaddr: vaddr,
        p_paddr: vaddr,
        p_filesz: code.len() as u64,
        p_memsz: code.len() as u64,
        p_align: 0x1000,
    });
    w.write_align(16);
    w.write(code);
    out
}

/// The floor: the ioctls that put a CPL3 `syscall` into a fresh VM and run it to its exit.
struct Floor {
    vcpu: kvm_ioctls::VcpuFd,
    _vm: kvm_ioctls::VmFd,
    _ram: GuestRam,
}

impl Floor {
    fn create_and_run() -> Self {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let ram = GuestRam::new(0, MEM).unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: ram.host_address(),
        };
        // SAFETY: the region is `ram`'s live mapping, which this struct keeps alive as long
        // as the VM (fields drop in order: vcpu, VM, then memory).
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        ram.write(USER_BASE, &[0x0f, 0x05]).unwrap(); // syscall
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        layout::write_tables(&ram, MEM, &mut sregs).unwrap();
        layout::setup_sregs(&mut sregs, false);
        vcpu.set_sregs(&sregs).unwrap();
        rypervisor::vcpu::set_msrs(&vcpu, &layout::msrs()).unwrap();
        let mut floor = Self {
            vcpu,
            _vm: vm,
            _ram: ram,
        };
        floor.rerun();
        floor
    }

    /// Registers back to the start, run to the syscall exit.
    fn rerun(&mut self) {
        let regs = kvm_regs {
            rip: USER_BASE,
            rsp: MEM - 64,
            rflags: 2,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).unwrap();
        match self.vcpu.run().unwrap() {
            VcpuExit::IoOut(SYSCALL_PORT, _) => {}
            other => panic!("floor: unexpected exit {other:?}"),
        }
    }
}

fn library(c: &mut Criterion) {
    support::require_kvm();
    let exit0 = tiny_elf(&EXIT0);
    let mut g = c.benchmark_group("sandbox");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("create_to_first_syscall/floor", |b| {
        b.iter(Floor::create_and_run)
    });
    g.bench_function("create_to_first_syscall/sandbox", |b| {
        b.iter(|| {
            let mut s = SandboxBuilder::new("exit0", exit0.clone())
                .mem(MEM)
                .build()
                .unwrap();
            assert_eq!(s.run(&mut BufferHost::default()).unwrap(), Exit::Exited(0));
        })
    });
    let mut floor = Floor::create_and_run();
    g.bench_function("reset_to_next_syscall/floor", |b| b.iter(|| floor.rerun()));
    let mut warm = SandboxBuilder::new("read", tiny_elf(&READ_THEN_EXIT))
        .mem(MEM)
        .build()
        .unwrap()
        .into_warm()
        .unwrap();
    g.bench_function("reset_to_next_syscall/sandbox", |b| {
        b.iter(|| {
            let reply = warm.call(b"x").unwrap();
            assert_eq!(reply.exit, Exit::Exited(0));
        })
    });
    // A realistic request: the C warm program (glibc), 768 KiB dirtied per request.
    let mut warm_c = SandboxBuilder::from_file(&program("warm", Libc::Glibc))
        .unwrap()
        .mem(32 << 20)
        .build()
        .unwrap()
        .into_warm()
        .unwrap();
    g.bench_function("request/warm.c", |b| {
        b.iter(|| warm_c.call(b"request\n").unwrap())
    });
    g.finish();
}

fn run(cmd: &[&Path], args: &[&str]) {
    let status = Command::new(cmd[0])
        .args(&cmd[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} {args:?}: {status}");
}

fn processes(c: &mut Criterion) {
    support::require_kvm();
    let vmm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/rypervisor");
    assert!(
        vmm.exists(),
        "build the CLI first: cargo build --release (looked for {})",
        vmm.display()
    );
    let exec = Path::new("exec");
    let qemu = Path::new("/usr/bin/qemu-x86_64-static");
    let cases: [(&str, &[&str]); 3] = [
        ("hello", &[]),
        ("compute", &["3000000"]),
        ("getpid", &["20000"]),
    ];
    let mut g = c.benchmark_group("process");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (name, args) in cases {
        let prog = program(name, Libc::Glibc);
        g.bench_function(format!("{name}/native"), |b| b.iter(|| run(&[&prog], args)));
        g.bench_function(format!("{name}/rypervisor"), |b| {
            b.iter(|| run(&[&vmm, exec, Path::new("--"), &prog], args))
        });
        if qemu.exists() {
            g.bench_function(format!("{name}/qemu-user"), |b| {
                b.iter(|| run(&[qemu, &prog], args))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, library, processes);
criterion_main!(benches);
