//! Bad input: one clear line on stderr, exit status 1, never a panic.

mod common;

use common::*;

fn one_line_error(r: &Run, needle: &str) {
    assert_eq!(r.status, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line expected:\n{}", r.stderr);
    assert!(lines[0].starts_with("rypervisor: error: "), "{}", r.stderr);
    assert!(
        r.stderr.contains(needle),
        "expected '{needle}' in: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

fn usage_error(r: &Run, needle: &str) {
    assert_ne!(r.status, 0);
    assert!(
        r.status == 1 || r.status == 2,
        "clap usage errors exit 2: {}",
        r.status
    );
    assert!(
        r.stderr.contains(needle),
        "expected '{needle}' in: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn missing_file() {
    one_line_error(
        &rypervisor(&["run", "/nonexistent/guest.bin"], b""),
        "cannot read image /nonexistent/guest.bin: No such file or directory",
    );
}

#[test]
fn empty_file() {
    let f = Files::new();
    let p = f.write("empty.bin", b"");
    one_line_error(
        &rypervisor(&["run", path_str(&p)], b""),
        "the image is empty",
    );
}

#[test]
fn image_larger_than_memory() {
    require_kvm();
    let f = Files::new();
    let p = f.write("big.bin", &vec![0x90; 100 * 1024]);
    one_line_error(
        &rypervisor(&["run", "--mem", "64K", path_str(&p)], b""),
        "is 100 KiB, larger than guest memory (--mem) (64 KiB)",
    );
}

#[test]
fn long_mode_image_overlapping_the_cpu_tables() {
    let f = Files::new();
    let p = f.write("big.bin", &vec![0x90; 0x1f_8000]);
    one_line_error(
        &rypervisor(&["run", "--mode", "long", path_str(&p)], b""),
        "holds the CPU tables",
    );
}

#[test]
fn load_address_outside_memory() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    one_line_error(
        &rypervisor(
            &["run", "--mode", "long", "--load", "0x400000", path_str(&p)],
            b"",
        ),
        "0x400000..0x400001 do not fit in guest memory",
    );
}

#[test]
fn entry_outside_memory() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    one_line_error(
        &rypervisor(
            &[
                "run",
                "--mode",
                "long",
                "--entry",
                "0x7000000",
                path_str(&p),
            ],
            b"",
        ),
        "entry point 0x7000000 is outside guest memory",
    );
}

#[test]
fn truncated_elf() {
    let f = Files::new();
    let full = elf(true, object::elf::EM_X86_64, 0x1000, &[0xf4; 64]);
    for cut in [8, 40, 70, 130] {
        let p = f.write("cut.elf", &full[..cut]);
        one_line_error(&rypervisor(&["run", path_str(&p)], b""), "corrupt ELF");
    }
}

#[test]
fn corrupt_elf_class() {
    let f = Files::new();
    let mut bytes = elf(true, object::elf::EM_X86_64, 0x1000, &[0xf4]);
    bytes[4] = 9;
    let p = f.write("class.elf", &bytes);
    one_line_error(
        &rypervisor(&["run", path_str(&p)], b""),
        "corrupt ELF: unknown ELF class 9",
    );
}

#[test]
fn elf_for_another_machine() {
    let f = Files::new();
    let p = f.write(
        "arm.elf",
        &elf(true, object::elf::EM_AARCH64, 0x1000, &[0; 4]),
    );
    one_line_error(
        &rypervisor(&["run", path_str(&p)], b""),
        "built for AArch64",
    );
}

#[test]
fn linux_kernel_given_to_run() {
    let f = Files::new();
    let mut b = vec![0u8; 0x1000];
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    let p = f.write("bzImage", &b);
    one_line_error(
        &rypervisor(&["run", path_str(&p)], b""),
        "this is a Linux kernel",
    );
}

#[test]
fn zero_memory() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    one_line_error(
        &rypervisor(&["run", "--mem", "0", path_str(&p)], b""),
        "must be greater than zero",
    );
}

#[test]
fn absurd_memory() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    one_line_error(
        &rypervisor(&["run", "--mem", "1T", path_str(&p)], b""),
        "is too large",
    );
    one_line_error(
        &rypervisor(&["run", "--mem", "5000", path_str(&p)], b""),
        "not a multiple of 4 KiB",
    );
    usage_error(
        &rypervisor(&["run", "--mem", "lots", path_str(&p)], b""),
        "invalid size 'lots'",
    );
    usage_error(
        &rypervisor(&["run", "--mem", "99999999999G", path_str(&p)], b""),
        "invalid size",
    );
}

#[test]
fn memory_too_small_for_long_mode_tables() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    one_line_error(
        &rypervisor(
            &["run", "--mode", "long", "--mem", "32K", path_str(&p)],
            b"",
        ),
        "is too small",
    );
}

#[test]
fn user_mode_needs_long_mode() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    one_line_error(
        &rypervisor(&["run", "--user", "--mode", "real", path_str(&p)], b""),
        "needs long mode",
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let f = Files::new();
    let p = f.write("hlt.bin", &[0xf4]);
    usage_error(
        &rypervisor(&["run", "--mode", "weird", path_str(&p)], b""),
        "unknown mode 'weird'",
    );
    usage_error(
        &rypervisor(&["run", "--timeout", "0", path_str(&p)], b""),
        "positive number of seconds",
    );
    usage_error(
        &rypervisor(&["run", "--reg", "rzz=1", path_str(&p)], b""),
        "unknown register",
    );
    usage_error(
        &rypervisor(&["run", "--load", "zz", path_str(&p)], b""),
        "not a number",
    );
}

#[test]
fn missing_kvm_device_says_what_to_do() {
    one_line_error(
        &rypervisor(&["--kvm-device", "/nonexistent/kvm", "demo"], b""),
        "load the kvm_intel or kvm_amd module",
    );
}

#[test]
fn a_device_that_is_not_kvm_is_refused() {
    one_line_error(
        &rypervisor(&["--kvm-device", "/dev/null", "demo"], b""),
        "/dev/null is not a KVM device",
    );
}
