//! rypervisor: a small virtual machine monitor on Linux KVM that explains itself.
//!
//! The crate wraps the KVM objects the way the LWN article "Using the KVM API" introduces
//! them: the system ([`kvm`]), a virtual machine ([`vm`]) with its guest [`memory`], and a
//! virtual CPU ([`vcpu`]) whose exits are dispatched to devices on one [`bus::Bus`].
//! [`builder`] assembles a [`machine::Machine`] in the article's numbered steps, and can
//! narrate each step (every ioctl, the memory map, register tables, each VM exit) to an
//! [`explain::Observer`].
//!
//! # Example: the LWN program
//!
//! Twelve bytes of real-mode code add rax and rbx, print the sum on the serial port and halt:
//!
//! ```
//! use rypervisor::{builder, explain, CpuMode, Gpr, Image, MachineConfig, Outcome};
//!
//! // mov dx,0x3f8; add al,bl; add al,'0'; out dx,al; mov al,'\n'; out dx,al; hlt
//! let code = vec![0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, b'0', 0xee, 0xb0, b'\n', 0xee, 0xf4];
//! let image = Image::flat(code, 0x1000, None, CpuMode::Real).unwrap();
//! let config = MachineConfig {
//!     ram_base: 0x1000,
//!     ram_size: 0x1000,
//!     registers: vec![(Gpr::Rax, 2), (Gpr::Rbx, 2)],
//!     ..MachineConfig::default()
//! };
//! let console = rypervisor::devices::SharedBuffer::default();
//! let mut machine = builder::build(&config, &image, &mut explain::Silent).unwrap();
//! machine.add_serial(Box::new(console.clone()), None).unwrap();
//! let report = machine.run(&mut explain::Silent).unwrap();
//! assert_eq!(report.outcome, Outcome::Halted);
//! assert_eq!(console.contents(), b"4\n");
//! assert_eq!(report.stats.count(rypervisor::vcpu::ExitKind::IoOut), 2);
//! ```

pub mod arch;
pub mod boot;
pub mod builder;
pub mod bus;
pub mod cpu_template;
pub mod devices;
pub mod disasm;
pub mod explain;
pub mod hostfile;
pub mod info;
pub mod kvm;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod sandbox;
pub mod seccomp;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod watchdog;

pub use arch::{CpuMode, Gpr, Privilege};
pub use loader::Image;
pub use machine::{Machine, MachineConfig, Outcome, RunReport};
