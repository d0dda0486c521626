//! Real guests in every x86 mode, run by the `rypervisor` binary against /dev/kvm.
//! Ring-0, real- and protected-mode guests are kept to a few dozen instructions: on nested
//! hosts KVM emulates them one instruction at a time.

mod common;

use common::*;
use iced_x86::code_asm::*;

fn run_image(files: &Files, name: &str, bytes: &[u8], args: &[&str], stdin: &[u8]) -> Run {
    require_kvm();
    let path = files.write(name, bytes);
    let mut all: Vec<&str> = vec!["run", "--timeout", "60"];
    all.extend_from_slice(args);
    all.push(path_str(&path));
    rypervisor(&all, stdin)
}

#[test]
fn real_mode_guest_prints_and_exits_with_its_status() {
    let code = assemble(16, 0x1000, |a| {
        print(a, b"real mode\n")?;
        exit(a, 5)
    });
    let r = run_image(&Files::new(), "real.bin", &code, &["--mode", "real"], b"");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (5, "real mode\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn protected_mode_guest_prints_and_exits_with_its_status() {
    let code = assemble(32, 0x1000, |a| {
        print(a, b"protected\n")?;
        exit(a, 6)
    });
    let r = run_image(
        &Files::new(),
        "pm.bin",
        &code,
        &["--mode", "protected"],
        b"",
    );
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (6, "protected\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn long_mode_kernel_guest_prints_and_exits_with_its_status() {
    let code = assemble(64, 0x1000, |a| {
        print(a, b"long cpl0\n")?;
        // Check we really are at CPL0: CS low bits.
        a.mov(ax, cs)?;
        a.and(ax, 3)?;
        a.add(al, b'0' as u32)?;
        a.out(dx, al)?;
        exit(a, 7)
    });
    let r = run_image(&Files::new(), "lm.bin", &code, &["--mode", "long"], b"");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (7, "long cpl0\n0"),
        "{}",
        r.stderr
    );
}

#[test]
fn long_mode_user_guest_runs_at_cpl3_with_port_io() {
    let code = assemble(64, 0x1000, |a| {
        print(a, b"long cpl3\n")?;
        a.mov(ax, cs)?;
        a.and(ax, 3)?;
        a.add(al, b'0' as u32)?;
        a.out(dx, al)?;
        // A loop long enough to matter if CPL3 were emulated: 10 million iterations.
        a.mov(ecx, 10_000_000u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        exit(a, 8)
    });
    let r = run_image(&Files::new(), "user.bin", &code, &["--user"], b"");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (8, "long cpl3\n3"),
        "{}",
        r.stderr
    );
}

#[test]
fn halt_ends_with_status_zero() {
    let code = assemble(64, 0x1000, |a| {
        print(a, b"bye")?;
        a.hlt()
    });
    let r = run_image(&Files::new(), "hlt.bin", &code, &["--mode", "long"], b"");
    assert_eq!((r.status, r.stdout.as_str()), (0, "bye"), "{}", r.stderr);
}

/// Echoes serial input until '!', polling the line status register.
fn echo_guest(bitness: u32) -> Vec<u8> {
    assemble(bitness, 0x1000, |a| {
        let mut poll = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut poll)?;
        a.mov(dx, 0x3fd)?;
        a.in_(al, dx)?;
        a.test(al, 1)?;
        a.jz(poll)?;
        a.mov(dx, 0x3f8)?;
        a.in_(al, dx)?;
        a.cmp(al, b'!' as u32)?;
        a.je(done)?;
        a.out(dx, al)?;
        a.jmp(poll)?;
        a.set_label(&mut done)?;
        exit(a, 0)
    })
}

#[test]
fn serial_input_comes_from_stdin() {
    let r = run_image(
        &Files::new(),
        "echo.bin",
        &echo_guest(64),
        &["--user"],
        b"hello, guest!ignored",
    );
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "hello, guest"),
        "{}",
        r.stderr
    );
}

#[test]
fn serial_input_works_in_real_mode_too() {
    let r = run_image(&Files::new(), "echo16.bin", &echo_guest(16), &[], b"abc!");
    assert_eq!((r.status, r.stdout.as_str()), (0, "abc"), "{}", r.stderr);
}

#[test]
fn elf64_runs_in_long_mode() {
    let code = assemble(64, 0x40_0000, |a| {
        print(a, b"elf64\n")?;
        exit(a, 9)
    });
    let image = elf(true, object::elf::EM_X86_64, 0x40_0000, &code);
    let r = run_image(&Files::new(), "prog64.elf", &image, &["--mem", "8M"], b"");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (9, "elf64\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn elf64_runs_at_cpl3() {
    let code = assemble(64, 0x20_0000, |a| {
        a.mov(ax, cs)?;
        a.and(ax, 3)?;
        a.add(al, b'0' as u32)?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)?;
        exit(a, 10)
    });
    let image = elf(true, object::elf::EM_X86_64, 0x20_0000, &code);
    let r = run_image(
        &Files::new(),
        "user.elf",
        &image,
        &["--mem", "4M", "--user"],
        b"",
    );
    assert_eq!((r.status, r.stdout.as_str()), (10, "3"), "{}", r.stderr);
}

#[test]
fn elf32_runs_in_protected_mode() {
    let code = assemble(32, 0x10_0000, |a| {
        print(a, b"elf32\n")?;
        exit(a, 11)
    });
    let image = elf(false, object::elf::EM_386, 0x10_0000, &code);
    let r = run_image(&Files::new(), "prog32.elf", &image, &[], b"");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (11, "elf32\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn elf_mode_contradicting_mode_flag_is_refused() {
    let code = assemble(32, 0x10_0000, |a| exit(a, 0));
    let image = elf(false, object::elf::EM_386, 0x10_0000, &code);
    let r = run_image(
        &Files::new(),
        "prog32.elf",
        &image,
        &["--mode", "long"],
        b"",
    );
    assert_eq!(r.status, 1);
    assert!(
        r.stderr.contains("contradicts the ELF file"),
        "{}",
        r.stderr
    );
}

#[test]
fn triple_fault_is_reported_with_status_2() {
    // An IDT with limit 0: the #UD cannot be delivered, nor the #GP, nor the #DF.
    let code = assemble(64, 0x1000, |a| {
        a.xor(eax, eax)?;
        a.push(rax)?;
        a.push(rax)?;
        a.lidt(ptr(rsp))?;
        a.ud2()
    });
    let r = run_image(&Files::new(), "tf.bin", &code, &["--mode", "long"], b"");
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert!(r.stderr.contains("triple fault"), "{}", r.stderr);
    assert!(
        r.stderr.contains("rip="),
        "registers in the report: {}",
        r.stderr
    );
}

#[test]
fn cpl3_invalid_opcode_is_reported_not_a_triple_fault() {
    let code = assemble(64, 0x1000, |a| {
        a.nop()?;
        a.ud2()
    });
    let r = run_image(&Files::new(), "ud.bin", &code, &["--user"], b"");
    assert_eq!(r.status, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("#UD invalid opcode (vector 6) at rip 0x1001, cpl 3"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("ud2"),
        "disassembly in the report: {}",
        r.stderr
    );
}

#[test]
fn cpl3_page_fault_names_the_address() {
    let code = assemble(64, 0x1000, |a| {
        a.mov(rbx, 0x1_0000_0000u64)?;
        a.mov(eax, dword_ptr(rbx))
    });
    let r = run_image(&Files::new(), "pf.bin", &code, &["--user"], b"");
    assert_eq!(r.status, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("#PF page fault (vector 14)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("address 0x100000000"), "{}", r.stderr);
    assert!(r.stderr.contains("mov eax,[rbx]"), "{}", r.stderr);
}

#[test]
fn protected_mode_general_protection_fault_is_reported() {
    let code = assemble(32, 0x1000, |a| {
        a.mov(eax, 0x1234u32)?;
        a.mov(ds, ax) // selector 0x1234 is past the GDT limit
    });
    let r = run_image(
        &Files::new(),
        "gp.bin",
        &code,
        &["--mode", "protected"],
        b"",
    );
    assert_eq!(r.status, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("#GP general protection (vector 13)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("error code 0x1234"), "{}", r.stderr);
}

#[test]
fn mmio_to_nowhere_reads_all_ones_and_is_logged() {
    let code = assemble(64, 0x1000, |a| {
        let mut bad = a.create_label();
        a.mov(ebx, 0xd000_0000u32)?;
        a.mov(eax, dword_ptr(rbx))?;
        a.cmp(eax, -1)?;
        a.jne(bad)?;
        a.mov(dword_ptr(rbx), eax)?;
        exit(a, 42)?;
        a.set_label(&mut bad)?;
        exit(a, 1)
    });
    let r = run_image(
        &Files::new(),
        "mmio.bin",
        &code,
        &["--mode", "long", "--stats"],
        b"",
    );
    assert_eq!(r.status, 42, "{}", r.stderr);
    assert!(
        r.stderr.contains("at MMIO 0xd0000000 hit no device"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("mmio read"), "{}", r.stderr);
    assert!(
        r.stderr.contains("to no device              2"),
        "{}",
        r.stderr
    );
}

#[test]
fn port_io_to_nowhere_is_counted_not_fatal() {
    let code = assemble(64, 0x1000, |a| {
        a.mov(dx, 0x1234)?;
        a.in_(al, dx)?;
        a.cmp(al, 0xff)?;
        let mut bad = a.create_label();
        a.jne(bad)?;
        exit(a, 0)?;
        a.set_label(&mut bad)?;
        exit(a, 1)
    });
    let r = run_image(&Files::new(), "pio.bin", &code, &["--user"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("at port 0x1234 hit no device"),
        "{}",
        r.stderr
    );
}

#[test]
fn runaway_user_guest_is_stopped_by_the_timeout() {
    require_kvm();
    let files = Files::new();
    let code = assemble(64, 0x1000, |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    });
    let p = files.write("spin.bin", &code);
    let start = std::time::Instant::now();
    let r = rypervisor(&["run", "--user", "--timeout", "1", path_str(&p)], b"");
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.stderr.contains("timeout"), "{}", r.stderr);
    assert!(start.elapsed().as_secs() < 30, "stopped promptly");
}

#[test]
fn runaway_real_mode_guest_is_stopped_by_the_timeout() {
    require_kvm();
    let files = Files::new();
    let p = files.write("spin16.bin", &[0xeb, 0xfe]); // jmp $
    let r = rypervisor(&["run", "--timeout", "0.5", path_str(&p)], b"");
    assert_eq!(r.status, 124, "{}", r.stderr);
}

#[test]
fn registers_can_be_preset_to_run_the_lwn_program() {
    let lwn = [
        0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, b'0', 0xee, 0xb0, b'\n', 0xee, 0xf4,
    ];
    let r = run_image(
        &Files::new(),
        "lwn.bin",
        &lwn,
        &["--reg", "rax=3", "--reg", "rbx=0x4"],
        b"",
    );
    assert_eq!((r.status, r.stdout.as_str()), (0, "7\n"), "{}", r.stderr);
}

#[test]
fn stats_count_exits_and_time() {
    let code = assemble(64, 0x1000, |a| {
        print(a, b"abc")?;
        exit(a, 0)
    });
    let r = run_image(
        &Files::new(),
        "stats.bin",
        &code,
        &["--user", "--stats"],
        b"",
    );
    assert_eq!(r.status, 0);
    assert!(r.stderr.contains("exits: 4"), "{}", r.stderr);
    assert!(
        r.stderr.contains("io out                    4"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("time in guest"), "{}", r.stderr);
}

#[test]
fn emulation_failures_are_reported_with_the_instruction() {
    // `popcnt` at CPL0: hardware runs it (and the guest halts: status 0); KVM's instruction
    // emulator, which runs all ring-0 code on nested hosts such as kvm_pvm, cannot.
    let code = assemble(64, 0x1000, |a| {
        a.popcnt(rax, rbx)?;
        a.hlt()
    });
    let r = run_image(&Files::new(), "popcnt.bin", &code, &["--mode", "long"], b"");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(r.status, 3, "{}", r.stderr);
        assert!(
            r.stderr
                .contains("KVM_EXIT_INTERNAL_ERROR suberror 1: emulation failure"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("instruction: 0x1000: f3 48 0f b8 c3"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("popcnt rax,rbx"), "{}", r.stderr);
    } else {
        assert_eq!(r.status, 0, "{}", r.stderr);
    }
}

#[test]
fn every_thread_of_run_is_confined_by_seccomp() {
    require_kvm();
    let files = Files::new();
    let code = assemble(64, 0x1000, |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    });
    let p = files.write("spin.bin", &code);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["run", "--user", "--timeout", "20", path_str(&p)])
        .stdin(std::process::Stdio::piped()) // the UART's reader waits, parked
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let want = ["rypervisor", "console-output", "serial-input", "watchdog"];
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        seen = threads(child.id());
        let all_there = want.iter().all(|w| seen.iter().any(|(n, _)| n == w));
        if all_there && seen.iter().all(|(_, m)| m.ends_with('2')) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    for w in want {
        assert!(
            seen.iter().any(|(n, _)| n == w),
            "no {w} thread in {seen:?}"
        );
    }
    for (name, mode) in &seen {
        assert!(mode.ends_with('2'), "{name} is not confined: {mode}");
    }
}
