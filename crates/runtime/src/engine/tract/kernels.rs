//! Which of tract's matrix kernels run: two decisions tract makes per machine and per
//! shape, where ours measured better.
//!
//! **The kernel pool on AMD Zen 4.** On Zen 4 (x86 family 0x19 with AVX-512), tract picks
//! its AVX-512 kernels, but Zen 4 executes each 512-bit operation as two 256-bit halves, and
//! its AVX2/FMA kernels ran the OCR models faster: on a 2-core EPYC, det_small 300 -> 239
//! ms, det_tiny 127 -> 112, rec_small 21.8 -> 18.6 (`bench engines`), and end to end
//! det_small/small@960 406 -> 317 ms with every reading unchanged (docs/benchmarks.md,
//! "tract's AVX-512 kernels on Zen 4"). So there edgerun takes AVX-512 out of tract's kernel
//! pool, unless the user set `TRACT_CPU_ISA` themselves. It must run before tract first
//! probes the CPU (a [`super::TractEngine`] is made before any model loads).
//!
//! **One packing of a weight for every shape.** tract plans a model per input shape and
//! picks a matrix kernel per product from its shape (`m`, `k`, `n`). Weights are packed for
//! the kernel's tile, so where a recognizer's last layers take 8x8 tiles at 128 columns and
//! 16x5 at 160, the two plans hold those weights packed twice ([`super::weights`] shares
//! only equal packings). So while a further shape of a model is optimized, a tier above
//! tract's own ([`FOLLOW_TIER`]) answers each product whose weight an earlier plan packed
//! with that plan's kernel ([`KernelChoices`]), and leaves the rest to tract. The OCR
//! recognizers at six widths held 4.3 MB less (AMD EPYC), at the same speed within
//! 2% (docs/benchmarks.md). `EDGERUN_TRACT_KERNELS=tract` leaves every choice to tract, to
//! measure against.
//!
//! A followed plan answers value for value as one planned alone (`tests` in
//! `engine/tract.rs`): a kernel's tile decides which outputs are computed together, and each
//! still sums over `k` in order.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Once;

use parking_lot::Mutex;
use tract_linalg::mmm::{Suitable, suitable_named};
use tract_linalg::mmm_tiers::MmmTier;
use tract_onnx::prelude::DatumType;

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

/// The name of edgerun's tier in tract's kernel choice.
const FOLLOW_TIER: &str = "edgerun: kernels of the earlier plans";

inventory::submit! {
    MmmTier {
        // Every architecture: the choice varies by shape on each.
        arch: None,
        // Above tract's own tiers (the highest is 8), so it is asked first.
        precedence: 100,
        name: FOLLOW_TIER,
        applies: |_| {
            std::env::var_os("EDGERUN_TRACT_KERNELS").is_none_or(|choice| choice != "tract")
        },
        preferred: |_, accumulator, query, suitable| {
            if accumulator != DatumType::F32 {
                return None;
            }
            let (m, k, n) = (query.m?, query.k?, query.n?);
            FOLLOWED.with_borrow(|followed| followed.kernel_for(m, k, n, suitable))
        },
    }
}

thread_local! {
    /// The choices the plan being optimized on this thread follows (none outside
    /// [`KernelChoices::follow_while`]).
    static FOLLOWED: RefCell<KernelChoices> = RefCell::default();
}

/// Which operand of a matrix product a constant weight is: tract makes the larger of the
/// two outer dimensions the left one (`m`), so a weight is the left operand at one shape
/// and the right one at another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    Left,
    Right,
}

/// A weight matrix packed for a kernel in an earlier plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed {
    operand: Operand,
    k: usize,
    /// The weight's other dimension: `m` as the left operand, `n` as the right one.
    rows: usize,
    kernel: &'static str,
}

/// The kernels a model's earlier plans packed their weights for.
#[derive(Debug, Default)]
pub struct KernelChoices(Vec<Packed>);

impl KernelChoices {
    /// Records that a weight `rows` by `k`, as `operand`, is packed for `kernel`.
    pub fn record(&mut self, operand: Operand, rows: usize, k: usize, kernel: &str) {
        let packed = Packed {
            operand,
            k,
            rows,
            kernel: intern(kernel),
        };
        if !self.0.contains(&packed) {
            self.0.push(packed);
        }
    }

    /// Runs `optimize` with these choices followed wherever a product of its plan may be a
    /// weight packed before.
    pub fn follow_while<T>(self, optimize: impl FnOnce() -> T) -> T {
        /// Puts back what the thread followed before, also when `optimize` panics.
        struct Restore(Option<KernelChoices>);
        impl Drop for Restore {
            fn drop(&mut self) {
                if let Some(earlier) = self.0.take() {
                    FOLLOWED.set(earlier);
                }
            }
        }
        let _restore = Restore(Some(FOLLOWED.replace(self)));
        optimize()
    }

    /// The kernel an `m` x `k` by `k` x `n` product takes to reuse an earlier packing of its
    /// weight, if one of its operands may be such a weight: the left one by `m` and `k`, the
    /// right one by `k` and `n`. None where weights of these dimensions were packed for
    /// different kernels (two layers alike in shape, which tract chose apart), or where the
    /// kernel's tile is wider (`nr`) than `n` or taller (`mr`) than `m`, since it would
    /// mostly compute padding: tract then chooses by shape.
    fn kernel_for(
        &self,
        m: usize,
        k: usize,
        n: usize,
        suitable: &[Suitable],
    ) -> Option<&'static str> {
        let mut same_weights = self.0.iter().filter(|packed| {
            let weight_side = match packed.operand {
                Operand::Left => m,
                Operand::Right => n,
            };
            packed.k == k && packed.rows == weight_side
        });
        let packed = same_weights.next()?;
        if same_weights.any(|other| other.kernel != packed.kernel) {
            return None;
        }
        let (kernel, _, _) = &suitable[suitable_named(suitable, packed.kernel)?];
        let fits = match packed.operand {
            Operand::Left => n >= kernel.nr(),
            Operand::Right => m >= kernel.mr(),
        };
        fits.then_some(packed.kernel)
    }
}

/// tract's tiers answer with `&'static str` names; the kernels of a plan give theirs by
/// reference. There are a few dozen kernels, so each name is kept once for the process.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock();
    match names.get(name) {
        Some(kept) => kept,
        None => {
            let kept: &'static str = Box::leak(name.into());
            names.insert(kept);
            kept
        }
    }
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

    /// A product follows an earlier packing of a weight of its dimensions, as either operand,
    /// unless the tile would not fit or two such weights were packed apart.
    #[test]
    fn a_product_follows_the_kernel_its_weight_was_packed_for() {
        let query = tract_linalg::mmm::Query::plain(DatumType::F32, None, None, None);
        let suitable = tract_linalg::MmmDispatch::native().suitable(&query);
        let mut tiles: Vec<_> = suitable.iter().map(|(kernel, _, _)| kernel).collect();
        tiles.retain(|kernel| kernel.mr() > 1 && kernel.nr() > 1);
        tiles.sort_by_key(|kernel| (kernel.nr(), kernel.mr()));
        let (narrow, wide) = (tiles[0], tiles[tiles.len() - 1]);
        assert!(narrow.nr() < wide.nr(), "{} {}", narrow.name(), wide.name());

        let mut choices = KernelChoices::default();
        choices.record(Operand::Left, 120, 384, wide.name());
        choices.record(Operand::Right, 64, 576, narrow.name());
        // The left weight, 120 x 384, at any width from one tile up.
        let follows = |choices: &KernelChoices, m, k, n| choices.kernel_for(m, k, n, &suitable);
        assert_eq!(follows(&choices, 120, 384, wide.nr()), Some(wide.name()));
        assert_eq!(follows(&choices, 120, 384, 1000), Some(wide.name()));
        assert_eq!(follows(&choices, 120, 384, wide.nr() - 1), None);
        assert_eq!(follows(&choices, 121, 384, 1000), None);
        // The right weight, 576 x 64, at any height from one tile up.
        assert_eq!(follows(&choices, 5000, 576, 64), Some(narrow.name()));
        assert_eq!(follows(&choices, narrow.mr() - 1, 576, 64), None);
        assert_eq!(follows(&choices, 5000, 577, 64), None);
        // Two layers alike in shape, packed for different kernels: no way to tell which.
        choices.record(Operand::Left, 120, 384, narrow.name());
        assert_eq!(follows(&choices, 120, 384, 1000), None);
        // Nothing recorded, nothing followed.
        assert_eq!(
            KernelChoices::default().kernel_for(120, 384, 1000, &suitable),
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
