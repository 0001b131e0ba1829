//! Which of tract's matrix kernels this CPU gets: the one decision tract's own probe gets
//! wrong on a CPU we measured.
//!
//! On AMD Zen 4 (x86 family 0x19 with AVX-512), tract picks its AVX-512 kernels, but Zen 4
//! executes each 512-bit operation as two 256-bit halves, and its AVX2/FMA kernels ran the
//! OCR models faster: on a 2-core EPYC, det_small 300 -> 239 ms, det_tiny 127 -> 112,
//! rec_small 21.8 -> 18.6 (`bench engines`), and end to end det_small/small@960 406 -> 317
//! ms with every reading unchanged (docs/benchmarks.md, "tract's AVX-512 kernels on Zen
//! 4"). So there edgerun takes AVX-512 out of tract's kernel pool, unless the user set
//! `TRACT_CPU_ISA` themselves. It must run before tract first probes the CPU (a
//! [`super::TractEngine`] is made before any model loads); it changes nothing else.

use std::sync::Once;

/// What the kernel choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub amd: bool,
    /// x86 family, extended family included (0x19: Zen 3 and Zen 4; 0x1a: Zen 5).
    pub family: u32,
    pub avx512f: bool,
}

/// The edit to tract's instruction set (`TRACT_CPU_ISA` syntax) for `cpu`, if any.
pub fn isa_edit(cpu: Cpu) -> Option<&'static str> {
    // Zen 3 has no AVX-512, so AVX-512 in family 0x19 means Zen 4.
    (cpu.amd && cpu.family == 0x19 && cpu.avx512f).then_some("-avx512f")
}

/// Applies [`isa_edit`] for this machine, once per process.
pub fn choose() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TRACT_CPU_ISA").is_some() {
            return;
        }
        if let Some(edit) = this_cpu().and_then(isa_edit) {
            tract_onnx::prelude::tract_linalg::knobs::TRACT_CPU_ISA.set(Some(edit.to_string()));
            tracing::info!("tract: AVX2 kernels on this AMD Zen 4 (TRACT_CPU_ISA={edit})");
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn this_cpu() -> Option<Cpu> {
    // Leaves 0 (vendor) and 1 (signature) exist on every x86_64 CPU.
    let vendor = std::arch::x86_64::__cpuid(0);
    let signature = std::arch::x86_64::__cpuid(1).eax;
    let amd = [vendor.ebx, vendor.edx, vendor.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .eq(*b"AuthenticAMD");
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature >> 20) & 0xff)
    } else {
        base
    };
    Some(Cpu {
        amd,
        family,
        avx512f: std::arch::is_x86_feature_detected!("avx512f"),
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn this_cpu() -> Option<Cpu> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zen_4_loses_avx512() {
        let zen4 = Cpu {
            amd: true,
            family: 0x19,
            avx512f: true,
        };
        assert_eq!(isa_edit(zen4), Some("-avx512f"));
        // Zen 3: same family, no AVX-512; Zen 5: full-width AVX-512, not measured.
        assert_eq!(
            isa_edit(Cpu {
                avx512f: false,
                ..zen4
            }),
            None
        );
        assert_eq!(
            isa_edit(Cpu {
                family: 0x1a,
                ..zen4
            }),
            None
        );
        // Intel's AVX-512 (the Xeon of docs/benchmarks.md) keeps tract's choice.
        assert_eq!(
            isa_edit(Cpu {
                amd: false,
                family: 6,
                ..zen4
            }),
            None
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_cpu_reads_its_vendor_and_family() {
        let cpu = this_cpu().unwrap();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
                .unwrap()
        };
        assert_eq!(cpu.amd, field("vendor_id") == "AuthenticAMD");
        assert_eq!(cpu.family, field("cpu family").parse::<u32>().unwrap());
        assert_eq!(
            cpu.avx512f,
            field("flags").split(' ').any(|f| f == "avx512f")
        );
    }
}
