//! `rypervisor info`: what this host's KVM offers, as text or JSON.

use anyhow::{Context, Result};
use rypervisor::info;

pub(crate) fn cmd_info(device: &std::path::Path, json: bool) -> Result<u8> {
    let host = info::probe(device).context("probing KVM")?;
    if json {
        println!("{}", serde_json_string(&host)?);
        return Ok(0);
    }
    println!("KVM device          {}", host.device);
    println!("API version         {}", host.api_version);
    println!("Capabilities");
    for c in &host.capabilities {
        let v = match c.value {
            0 => "no".to_string(),
            1 if !c.name.starts_with("KVM_CAP_NR") && !c.name.starts_with("KVM_CAP_MAX") => {
                "yes".to_string()
            }
            n => n.to_string(),
        };
        println!("  {:<30} {:<6} {}", c.name, v, c.purpose);
    }
    let cpu = &host.cpuid;
    println!(
        "Supported CPUID     {} entries, vendor {}, max leaf {:#x}, max extended leaf {:#x}",
        cpu.entries, cpu.vendor, cpu.max_leaf, cpu.max_extended_leaf
    );
    println!("  features          {}", cpu.features.join(" "));
    let r = &host.ring0;
    println!(
        "Guest ring 0        {}: a {}-iteration loop took {:.3} ms at CPL0 vs {:.3} ms at CPL3 ({:.0}x)",
        if r.emulated { "EMULATED" } else { "native" },
        r.iterations,
        r.cpl0.as_secs_f64() * 1e3,
        r.cpl3.as_secs_f64() * 1e3,
        r.ratio
    );
    if let Some(m) = &host.nested_module {
        println!("  nested KVM module {m} is loaded");
    }
    if r.emulated {
        println!(
            "  KVM interprets ring-0 and real/protected-mode guest code instruction by instruction here \
             (~1 µs each); user-mode (CPL3) code runs at native speed. Keep ring-0 guests short."
        );
    }
    Ok(0)
}

fn serde_json_string(host: &info::HostInfo) -> Result<String> {
    Ok(rypervisor::explain::to_json(host)?)
}
