//! Benchmarks of the VMM paths that matter, each next to a floor written with plain libc
//! ioctls in the same run: create → first exit, a port I/O exit round trip to a bus device,
//! and an MMIO exit round trip. Run with `cargo bench -p rypervisor`; the ratios go in
//! docs/PERFORMANCE.md.
//!
//! All guests are real-mode, 4 KiB of RAM at 0x1000, as in the LWN program, so both sides
//! do the same work for KVM.

// criterion's and vmm-sys-util's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs, kvm_userspace_memory_region};
use rypervisor::bus::{AddressSpace, BusDevice};
use rypervisor::explain::Silent;
use rypervisor::machine::Machine;
use rypervisor::{builder, CpuMode, Image, MachineConfig, Outcome};
/// The ioctl numbers, from `<linux/kvm.h>`.
mod nr {
    use kvm_bindings::{kvm_regs, kvm_sregs, kvm_userspace_memory_region, KVMIO};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

    ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
}
use nr::*;

const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;
const KVM_EXIT_MMIO: u32 = 6;
const LOAD: u64 = 0x1000;
/// Exits per measured batch in the round-trip benchmarks.
const BATCH: u16 = 100;

/// `hlt`.
const HLT: [u8; 1] = [0xf4];
/// `l: out 0x80,al; loop l; hlt` with cx = BATCH.
const PIO_LOOP: [u8; 5] = [0xe6, 0x80, 0xe2, 0xfc, 0xf4];
/// `l: mov [0x3000],al; loop l; hlt` with ds = 0, cx = BATCH: 0x3000 is past RAM, so MMIO.
const MMIO_LOOP: [u8; 6] = [0xa2, 0x00, 0x30, 0xe2, 0xfb, 0xf4];
const MMIO_ADDR: u64 = 0x3000;

fn check(ret: libc::c_int, what: &str) -> libc::c_int {
    assert!(
        ret >= 0,
        "{what} failed: {}",
        std::io::Error::last_os_error()
    );
    ret
}

/// The floor: the LWN sequence with raw ioctls and nothing else.
struct RawVm {
    _kvm: OwnedFd,
    _vm: OwnedFd,
    vcpu: OwnedFd,
    mem: *mut libc::c_void,
    run: *mut kvm_run,
    run_size: usize,
}

impl RawVm {
    fn new(code: &[u8]) -> Self {
        // SAFETY: every call below is a plain system call on descriptors this function owns,
        // with pointers to live, correctly sized structs; results are checked.
        unsafe {
            let kvm = check(
                libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
                "open",
            );
            let kvm = OwnedFd::from_raw_fd(kvm);
            let vm = OwnedFd::from_raw_fd(check(
                libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM(), 0),
                "KVM_CREATE_VM",
            ));
            let mem = libc::mmap(
                std::ptr::null_mut(),
                0x1000,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            assert_ne!(mem, libc::MAP_FAILED);
            std::ptr::copy_nonoverlapping(code.as_ptr(), mem.cast::<u8>(), code.len());
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: LOAD,
                memory_size: 0x1000,
                userspace_addr: mem as u64,
            };
            check(
                libc::ioctl(vm.as_raw_fd(), KVM_SET_USER_MEMORY_REGION(), &region),
                "KVM_SET_USER_MEMORY_REGION",
            );
            let vcpu = OwnedFd::from_raw_fd(check(
                libc::ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU(), 0),
                "KVM_CREATE_VCPU",
            ));
            let run_size = check(
                libc::ioctl(kvm.as_raw_fd(), KVM_GET_VCPU_MMAP_SIZE(), 0),
                "KVM_GET_VCPU_MMAP_SIZE",
            ) as usize;
            let run = libc::mmap(
                std::ptr::null_mut(),
                run_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            );
            assert_ne!(run, libc::MAP_FAILED);
            let mut sregs = kvm_sregs::default();
            check(
                libc::ioctl(vcpu.as_raw_fd(), KVM_GET_SREGS(), &mut sregs),
                "KVM_GET_SREGS",
            );
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            check(
                libc::ioctl(vcpu.as_raw_fd(), KVM_SET_SREGS(), &sregs),
                "KVM_SET_SREGS",
            );
            let vm = RawVm {
                _kvm: kvm,
                _vm: vm,
                vcpu,
                mem,
                run: run.cast(),
                run_size,
            };
            vm.set_regs(BATCH);
            vm
        }
    }

    fn set_regs(&self, rcx: u16) {
        let regs = kvm_regs {
            rip: LOAD,
            rflags: 2,
            rcx: u64::from(rcx),
            ..Default::default()
        };
        // SAFETY: KVM_SET_REGS reads a kvm_regs from a live reference.
        check(
            unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_SET_REGS(), &regs) },
            "KVM_SET_REGS",
        );
    }

    /// KVM_RUN once; returns the exit reason.
    fn run_once(&self) -> u32 {
        // SAFETY: KVM_RUN takes no argument; `run` is the vCPU's live kvm_run mapping.
        unsafe {
            check(libc::ioctl(self.vcpu.as_raw_fd(), KVM_RUN(), 0), "KVM_RUN");
            (*self.run).exit_reason
        }
    }

    /// Runs until HLT, dispatching exits the way a minimal VMM would (count them).
    fn run_to_halt(&self) -> u64 {
        let mut exits = 0;
        loop {
            match self.run_once() {
                KVM_EXIT_HLT => return exits,
                KVM_EXIT_IO | KVM_EXIT_MMIO => exits += 1,
                other => panic!("unexpected exit {other}"),
            }
        }
    }
}

impl Drop for RawVm {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with these sizes and are unmapped once.
        unsafe {
            libc::munmap(self.run.cast(), self.run_size);
            libc::munmap(self.mem, 0x1000);
        }
    }
}

/// A device that accepts everything: the cost measured is the dispatch, not the device.
struct Sink(u64);
impl BusDevice for Sink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0 += u64::from(data[0]);
    }
}

fn ours(code: &[u8]) -> Machine {
    let image = Image::flat(code.to_vec(), LOAD, None, CpuMode::Real).unwrap();
    let config = MachineConfig {
        ram_base: LOAD,
        ram_size: 0x1000,
        ..MachineConfig::default()
    };
    builder::build(&config, &image, &mut Silent).unwrap()
}

fn with_sink(mut m: Machine) -> Machine {
    let sink = Arc::new(Mutex::new(Sink(0)));
    m.add_device(AddressSpace::Pio, 0x80, 1, "sink", sink.clone())
        .unwrap();
    m.add_device(AddressSpace::Mmio, MMIO_ADDR, 0x1000, "sink", sink)
        .unwrap();
    m
}

fn rearm(m: &mut Machine) {
    let regs = kvm_regs {
        rip: LOAD,
        rflags: 2,
        rcx: u64::from(BATCH),
        ..Default::default()
    };
    m.vcpu().fd().set_regs(&regs).unwrap();
}

fn create_to_first_exit(c: &mut Criterion) {
    let mut g = c.benchmark_group("create_to_first_exit");
    g.sample_size(200).measurement_time(Duration::from_secs(8));
    g.bench_function("raw_ioctls", |b| {
        b.iter(|| {
            let vm = RawVm::new(&HLT);
            assert_eq!(vm.run_once(), KVM_EXIT_HLT);
            black_box(vm)
        })
    });
    g.bench_function("rypervisor", |b| {
        b.iter(|| {
            let mut m = ours(&HLT);
            let r = m.run(&mut Silent).unwrap();
            assert_eq!(r.outcome, Outcome::Halted);
            black_box(m)
        })
    });
    g.finish();
}

fn round_trips(c: &mut Criterion) {
    for (name, code) in [
        ("pio_exit_round_trip", &PIO_LOOP[..]),
        ("mmio_exit_round_trip", &MMIO_LOOP[..]),
    ] {
        let mut g = c.benchmark_group(name);
        g.sample_size(100).measurement_time(Duration::from_secs(8));
        let raw = RawVm::new(code);
        g.bench_function(BenchmarkId::new("raw_ioctls", BATCH), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    raw.set_regs(BATCH);
                    assert_eq!(raw.run_to_halt(), u64::from(BATCH));
                }
                start.elapsed()
            })
        });
        let mut m = with_sink(ours(code));
        g.bench_function(BenchmarkId::new("rypervisor", BATCH), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    rearm(&mut m);
                    let r = m.run(&mut Silent).unwrap();
                    assert_eq!(r.stats.total(), u64::from(BATCH) + 1);
                }
                start.elapsed()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, create_to_first_exit, round_trips);
criterion_main!(benches);
