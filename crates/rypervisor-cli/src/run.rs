//! `rypervisor run` and `demo`: a guest with a UART and (for `run`) the exit device, the
//! narration, and the fault report.

use std::io::Write;

use anyhow::{bail, Result};
use rypervisor::explain::{Format, Narrator, Observer, Silent};
use rypervisor::machine::{Machine, RunReport};
use rypervisor::{builder, Image, MachineConfig};

use crate::Narration;

pub(crate) fn run_guest(
    config: &MachineConfig,
    image: &Image,
    narration: &Narration,
    exit_device: bool,
) -> Result<u8> {
    if narration.json && !narration.explain {
        bail!("--json formats the --explain narration: add --explain");
    }
    let mut narrator;
    let obs: &mut dyn Observer = if narration.explain {
        let format = if narration.json {
            Format::Json
        } else {
            Format::Text
        };
        narrator = Narrator::new(std::io::stderr(), format);
        &mut narrator
    } else {
        &mut Silent
    };
    let mut machine: Machine = builder::build(config, image, obs)?;
    machine.add_serial(crate::guest_stdout()?, Some(Box::new(std::io::stdin())))?;
    if exit_device {
        machine.add_exit_device()?;
    }
    let report = machine.run(obs)?;
    finish(&report, narration.stats)
}

fn finish(report: &RunReport, stats: bool) -> Result<u8> {
    let _ = std::io::stdout().flush();
    if report.outcome.is_fault() {
        let text = report.fault_report();
        let mut lines = text.lines();
        if let Some(first) = lines.next() {
            eprintln!("rypervisor: {first}");
        }
        for l in lines {
            eprintln!("{l}");
        }
    }
    if stats {
        eprintln!("{}", report.stats);
    }
    let status = report.outcome.exit_status();
    Ok(u8::try_from(status).unwrap_or(3))
}
