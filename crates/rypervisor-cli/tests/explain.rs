//! `demo` and `--explain`: the LWN program, its narration, and the tutorial that walks it.

mod common;

use common::*;

/// The ioctls of the LWN article, in its order.
const LWN_ORDER: [&str; 8] = [
    "KVM_GET_API_VERSION",
    "KVM_CREATE_VM",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_CREATE_VCPU",
    "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SREGS",
    "KVM_SET_SREGS",
    "KVM_SET_REGS",
];

fn json_events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn ioctl_names(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "ioctl")
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn demo_prints_exactly_four() {
    require_kvm();
    let r = rypervisor(&["demo"], b"");
    assert_eq!(
        (r.status, r.stdout.as_str(), r.stderr.as_str()),
        (0, "4\n", "")
    );
}

#[test]
fn explain_trace_follows_the_lwn_order() {
    require_kvm();
    let r = rypervisor(&["demo", "--explain", "--json"], b"");
    assert_eq!((r.status, r.stdout.as_str()), (0, "4\n"), "{}", r.stderr);
    let events = json_events(&r.stderr);
    let names = ioctl_names(&events);
    let mut it = names.iter();
    for want in LWN_ORDER {
        assert!(
            it.any(|n| n == want),
            "{want} missing or out of order in {names:?}"
        );
    }
    // Exits: two OUTs to the serial port with '4' and '\n', then HLT.
    let exits: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "exit").collect();
    assert_eq!(exits.len(), 3, "{exits:?}");
    assert_eq!(exits[0]["reason"], "KVM_EXIT_IO");
    assert!(exits[0]["detail"].as_str().unwrap().contains("port 0x3f8"));
    assert!(exits[0]["detail"].as_str().unwrap().contains("'4'"));
    assert_eq!(exits[2]["reason"], "KVM_EXIT_HLT");
    // Register tables mark what changed: the VMM set rip=0x1000, rax=rbx=2.
    let regs = events
        .iter()
        .find(|e| {
            e["event"] == "registers"
                && e["title"].as_str().unwrap().starts_with("registers: reset")
        })
        .expect("a register table");
    let changed: Vec<&str> = regs["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["changed"] == true)
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for reg in ["rax", "rbx", "rip"] {
        assert!(
            changed.contains(&reg),
            "{reg} not marked changed: {changed:?}"
        );
    }
    // The memory map places the 12 bytes at guest-physical 0x1000.
    let map = events
        .iter()
        .find(|e| e["event"] == "memory_map")
        .expect("memory map");
    assert_eq!(map["regions"][0]["guest_start"], 0x1000);
    assert_ne!(map["regions"][0]["host_start"], 0);
}

#[test]
fn text_explanation_names_every_step_and_disassembles() {
    require_kvm();
    let r = rypervisor(&["demo", "--explain"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    for needle in [
        "Step 1: Open /dev/kvm",
        "ioctl(3, KVM_GET_API_VERSION, 0) = 12",
        "KVM_CREATE_VM",
        "0x1000: ba f8 03",
        "mov dx,3F8h",
        "KVM_GET_VCPU_MMAP_SIZE",
        "*cs",
        "*rip",
        "exit #1: KVM_EXIT_IO: out port 0x3f8, 1 byte(s): 0x34 '4'",
        "exit #3: KVM_EXIT_HLT",
    ] {
        assert!(
            r.stderr.contains(needle),
            "'{needle}' missing from:\n{}",
            r.stderr
        );
    }
}

#[test]
fn json_needs_explain() {
    let r = rypervisor(&["demo", "--json"], b"");
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("add --explain"), "{}", r.stderr);
}

#[test]
fn tutorial_shows_the_sequence_the_demo_prints() {
    require_kvm();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/how-kvm-works.md"
    ))
    .expect("docs/how-kvm-works.md");
    let block = doc
        .split("```ioctls\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```ioctls block in docs/how-kvm-works.md");
    let documented: Vec<String> = block
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let r = rypervisor(&["demo", "--explain", "--json"], b"");
    assert_eq!(r.status, 0);
    assert_eq!(
        documented,
        ioctl_names(&json_events(&r.stderr)),
        "the tutorial's ioctl sequence is stale"
    );
}

#[test]
fn run_explain_describes_long_mode_setup() {
    require_kvm();
    let f = Files::new();
    let code = assemble(64, 0x1000, |a| exit(a, 0));
    let p = f.write("lm.bin", &code);
    let r = rypervisor(&["run", "--user", "--explain", path_str(&p)], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    for needle in [
        "page tables identity-mapping the low 4 GiB",
        "CPL3",
        "*efer",
        "*cr3",
        "out 0F4h,al",
    ] {
        assert!(
            r.stderr.contains(needle),
            "'{needle}' missing from:\n{}",
            r.stderr
        );
    }
}

#[test]
fn info_reports_api_capabilities_and_ring0_speed() {
    require_kvm();
    let r = rypervisor(&["info"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    for needle in [
        "API version         12",
        "KVM_CAP_IRQCHIP",
        "KVM_CAP_IMMEDIATE_EXIT",
        "KVM_CAP_MAX_VCPUS",
        "Supported CPUID",
        "Guest ring 0",
    ] {
        assert!(
            r.stdout.contains(needle),
            "'{needle}' missing from:\n{}",
            r.stdout
        );
    }
    let j = rypervisor(&["info", "--json"], b"");
    assert_eq!(j.status, 0, "{}", j.stderr);
    let v: serde_json::Value = serde_json::from_str(j.stdout.trim()).unwrap();
    assert_eq!(v["api_version"], 12);
    for level in ["cpl0", "cpl3"] {
        let t = &v["ring0"][level];
        let nanos = t["secs"].as_u64().unwrap() * 1_000_000_000 + t["nanos"].as_u64().unwrap();
        assert!(nanos > 0, "{level} loop took no time: {t}");
    }
    // The verdict follows from the measurement.
    let ratio = v["ring0"]["ratio"].as_f64().unwrap();
    assert_eq!(v["ring0"]["emulated"].as_bool().unwrap(), ratio > 10.0);
}
