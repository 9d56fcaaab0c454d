//! Monarch plans: the factorisation `N = N_0 * ... * N_{p-1}` of an FFT size, its stage semantics,
//! the grouping of stages into on-chip / global-memory passes, and the permuted index maps.
//!
//! # Stage model (decimation in frequency)
//!
//! The data is `N` complex values. With `M_s = N_s * N_{s+1} * ... * N_{p-1}` (so `M_0 = N` and
//! `M_p = 1`), stage `s` (0-based) works independently on each contiguous block of length `M_s`,
//! viewed as a row-major `N_s x M_{s+1}` matrix (element `[r, j]` at offset `M_{s+1} * r + j`
//! within the block). It
//!
//! 1. replaces every column by its length-`N_s` DFT: a dense product with the `N_s x N_s` DFT
//!    matrix `F[k, r] = W_{N_s}^{k r}`, `W_n = exp(-2 pi i / n)`;
//! 2. multiplies element `[k, j]` by the twiddle `W_{M_s}^{(j k) mod M_s}` (the last stage has
//!    `M_{s+1} = 1`, so its twiddles are all one and are skipped).
//!
//! After row `k` of a block has been produced, it is a contiguous subsequence of length `M_{s+1}`
//! whose DFT holds the frequencies `k + N_s * (...)` of the block, which is what stage `s + 1`
//! transforms. So stage `s` works on blocks of size `M_s`: the first stage on the whole sequence,
//! the last stages on the smallest blocks.
//!
//! After all stages, position `P = sum_s M_{s+1} * k_s` holds frequency
//! `k = k_0 + N_0 * k_1 + N_0 * N_1 * k_2 + ...` (a mixed-radix digit reversal); see
//! [`MonarchPlan::frequency_at`] and [`MonarchPlan::position_of`].
//!
//! The inverse runs the stages in reverse order (`p-1` down to `0`); each multiplies by the
//! conjugated twiddles first and then applies the conjugated DFT matrix to the columns. Starting
//! from the permuted spectrum it yields `N * x` (unnormalised).
//!
//! # Passes
//!
//! A backend executes the stages in passes. Because the last stages work on the smallest blocks,
//! the maximal suffix of stages `t..p` whose block `M_t` fits on chip
//! (`M_t * bytes_per_element <= on_chip_bytes`) is fused into one on-chip pass: one load, all those
//! stages in shared memory / cache, one store. Every earlier stage `s < t` is its own
//! global-memory pass (its block does not fit, so its columns, of stride `M_{s+1}`, are streamed
//! through global memory; only a column of `N_s` elements per lane of work must be on chip).
//! The passes are listed in execution order for the forward transform: global passes `0, 1, ...,
//! t-1`, then the fused pass `t..p`. The inverse runs them in reverse.
//!
//! # Factorisation
//!
//! With `N = 2^L`, `f = log2(preferred_factor)` and `a = log2(max_factor)` (both rounded down to
//! powers of two), the order is `p = ceil(L / f)` (which is `>= ceil(L / a)`), and the `L` bits are
//! split as evenly as possible between the `p` factors, the larger factors first (outer stages), so
//! the inner stages, which are fused on chip, have the smaller blocks. Small sizes may therefore
//! be of order 1: with `preferred_factor = 16`, `N = 16` is a single 16 x 16 DFT, `N = 32` is
//! `8 x 4`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::CoreError;
use crate::size::FftSize;

/// What a backend can execute: factor sizes and the on-chip memory one pass may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanLimits {
    /// Largest DFT factor a stage may use (rounded down to a power of two).
    pub max_factor: usize,
    /// Factor size the planner aims for (rounded down to a power of two, at most `max_factor`).
    pub preferred_factor: usize,
    /// Bytes of on-chip memory (shared memory, or cache on a CPU) one fused pass may use.
    pub on_chip_bytes: usize,
    /// Bytes of one complex working element on chip (4 for complex f16, 8 for complex f32).
    pub bytes_per_element: usize,
}

impl PlanLimits {
    /// NVIDIA Hopper (sm_90): 227 KiB of shared memory per block, 16 x 16 tensor-core tiles,
    /// complex f16 working elements.
    pub fn cuda_sm90() -> Self {
        PlanLimits {
            max_factor: 64,
            preferred_factor: 16,
            on_chip_bytes: 232_448,
            bytes_per_element: 4,
        }
    }

    /// A Vulkan device with `shared_bytes` of workgroup shared memory (e.g. 49152),
    /// complex f32 working elements.
    pub fn vulkan(shared_bytes: usize) -> Self {
        PlanLimits {
            max_factor: 64,
            preferred_factor: 16,
            on_chip_bytes: shared_bytes,
            bytes_per_element: 8,
        }
    }

    /// A CPU: 1 MiB of L2 cache as the "on-chip" memory, complex f32 working elements.
    pub fn cpu() -> Self {
        PlanLimits {
            max_factor: 64,
            preferred_factor: 32,
            on_chip_bytes: 1 << 20,
            bytes_per_element: 8,
        }
    }

    /// `log2` of the largest usable factor and of the preferred factor, or `NoPlan` when no plan
    /// of any size can exist under these limits.
    fn factor_bits(&self, size: usize) -> Result<(u32, u32), CoreError> {
        let no_plan = |reason: String| CoreError::NoPlan { size, reason };
        if self.max_factor < 2 {
            return Err(no_plan(format!(
                "max_factor = {} (must be at least 2)",
                self.max_factor
            )));
        }
        if self.preferred_factor < 2 || self.preferred_factor > self.max_factor {
            return Err(no_plan(format!(
                "preferred_factor = {} (must be in 2..=max_factor = {})",
                self.preferred_factor, self.max_factor
            )));
        }
        if self.bytes_per_element == 0 {
            return Err(no_plan("bytes_per_element = 0".into()));
        }
        let max_bits = self.max_factor.ilog2();
        let column_bytes = (1usize << max_bits).checked_mul(self.bytes_per_element);
        if column_bytes.is_none_or(|b| b > self.on_chip_bytes) {
            return Err(no_plan(format!(
                "on_chip_bytes = {} cannot hold one column of {} elements of {} bytes",
                self.on_chip_bytes,
                1usize << max_bits,
                self.bytes_per_element
            )));
        }
        Ok((max_bits, self.preferred_factor.ilog2()))
    }
}

/// A run of consecutive stages executed as one pass over memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pass {
    /// The stages of the pass, in forward order.
    pub stages: Range<usize>,
    /// Whether the pass works on blocks held on chip (`true`: the fused suffix of stages) or
    /// streams its columns through global memory (`false`: one stage whose block does not fit).
    pub on_chip: bool,
}

/// A Monarch factorisation of an FFT size and its passes (immutable; see the module docs for the
/// stage semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonarchPlan {
    size: FftSize,
    factors: Vec<usize>,
    passes: Vec<Pass>,
}

type PlanCache = Mutex<HashMap<(FftSize, PlanLimits), Arc<MonarchPlan>>>;

impl MonarchPlan {
    /// The plan for `size` under `limits` (see the module docs for how factors and passes are
    /// chosen). Fails with [`CoreError::NoPlan`] when the limits admit no plan.
    pub fn new(size: FftSize, limits: &PlanLimits) -> Result<MonarchPlan, CoreError> {
        let (max_bits, pref_bits) = limits.factor_bits(size.len())?;
        let bits = size.log2();
        let order = bits.div_ceil(pref_bits).max(1);
        debug_assert!(order >= bits.div_ceil(max_bits));
        let (base, extra) = (bits / order, bits % order);
        let factors: Vec<usize> = (0..order)
            .map(|i| 1usize << (base + u32::from(i < extra)))
            .collect();

        // Blocks M_s = N_s * ... * N_{p-1}; the fused suffix starts at the first stage whose block
        // fits on chip (blocks shrink with s, so all later ones fit too).
        let mut plan = MonarchPlan {
            size,
            factors,
            passes: Vec::new(),
        };
        let fits = |s: usize| {
            plan.block_len(s)
                .checked_mul(limits.bytes_per_element)
                .is_some_and(|b| b <= limits.on_chip_bytes)
        };
        let p = plan.order();
        let first_fused = (0..p).find(|&s| fits(s)).unwrap_or(p);
        let mut passes: Vec<Pass> = (0..first_fused)
            .map(|s| Pass {
                stages: s..s + 1,
                on_chip: false,
            })
            .collect();
        if first_fused < p {
            passes.push(Pass {
                stages: first_fused..p,
                on_chip: true,
            });
        }
        plan.passes = passes;
        Ok(plan)
    }

    /// Like [`MonarchPlan::new`], but memoised process-wide: equal `(size, limits)` share one plan.
    pub fn cached(size: FftSize, limits: &PlanLimits) -> Result<Arc<MonarchPlan>, CoreError> {
        static CACHE: OnceLock<PlanCache> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let key = (size, *limits);
        {
            let map = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(plan) = map.get(&key) {
                return Ok(Arc::clone(plan));
            }
        }
        // Build outside the lock; if another thread raced us, keep the first plan stored.
        let plan = Arc::new(MonarchPlan::new(size, limits)?);
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(map.entry(key).or_insert(plan)))
    }

    /// The FFT size `N`.
    pub fn size(&self) -> FftSize {
        self.size
    }

    /// The factors `N_0, ..., N_{p-1}` (powers of two, product `N`), in stage order.
    pub fn factors(&self) -> &[usize] {
        &self.factors
    }

    /// The passes, in forward execution order; they cover stages `0..order()` in order.
    pub fn passes(&self) -> &[Pass] {
        &self.passes
    }

    /// The order `p` (number of stages).
    pub fn order(&self) -> usize {
        self.factors.len()
    }

    /// `M_s = N_s * ... * N_{p-1}`: the contiguous block stage `s` works on (`1` for `s >= p`).
    pub fn block_len(&self, stage: usize) -> usize {
        self.factors.get(stage..).map_or(1, |f| f.iter().product())
    }

    /// `M_{s+1}`: the number of columns of stage `s`'s block matrix, i.e. the stride between the
    /// elements of one column.
    pub fn stride(&self, stage: usize) -> usize {
        self.block_len(stage.saturating_add(1))
    }

    /// The number of global-memory (not fused on-chip) passes.
    pub fn global_passes(&self) -> usize {
        self.passes.iter().filter(|p| !p.on_chip).count()
    }

    /// The frequency held at `position` of the permuted output (taken mod `N`).
    ///
    /// Position `P = sum_s M_{s+1} k_s` holds `k = k_0 + N_0 k_1 + N_0 N_1 k_2 + ...`.
    pub fn frequency_at(&self, position: usize) -> usize {
        // Walk stages from the last (least significant position digit) to the first.
        let mut pos = position & (self.size.len() - 1);
        let mut k = 0usize;
        let mut shift_out = self.size.log2();
        for &f in self.factors.iter().rev() {
            let b = f.trailing_zeros();
            shift_out -= b;
            // Digit k_s sits in the low bits of pos; its weight in k is N_0 * ... * N_{s-1}.
            k |= (pos & (f - 1)) << shift_out;
            pos >>= b;
        }
        k
    }

    /// The position of `frequency` (taken mod `N`) in the permuted output; the inverse of
    /// [`MonarchPlan::frequency_at`].
    pub fn position_of(&self, frequency: usize) -> usize {
        let mut k = frequency & (self.size.len() - 1);
        let mut pos = 0usize;
        let mut shift_out = self.size.log2();
        for &f in &self.factors {
            let b = f.trailing_zeros();
            shift_out -= b;
            // Digit k_s (low bits of k now) goes to position weight M_{s+1} = 2^shift_out.
            pos |= (k & (f - 1)) << shift_out;
            k >>= b;
        }
        pos
    }

    /// `G = N / N_{p-1}`: frequencies `[a G, (a + 1) G)` all come out of row `k_{p-1} = a` of the
    /// last stage's DFT (the last stage produces the most significant frequency digit).
    pub fn frequency_block_len(&self) -> usize {
        self.size.len() / self.factors.last().copied().unwrap_or(1)
    }

    /// Rows `k_{p-1}` of the last stage's DFT matrix (ascending) that produce frequencies of a real
    /// filter's spectrum that is zero outside `k < m` and `k > N - m` (`m = kept_real_bins`, the
    /// non-negative frequencies kept, clamped to `N`).
    ///
    /// GPU kernels compute only these rows in the last forward stage (and use only these columns
    /// in the first inverse stage, whose other inputs are zero after the pointwise product), and
    /// skip the others. `m = 0` needs no rows; `m > N / 2` needs all of them.
    pub fn last_stage_rows_for_kept(&self, kept_real_bins: usize) -> Vec<usize> {
        let n = self.size.len();
        let m = kept_real_bins.min(n);
        let g = self.frequency_block_len();
        let rows = n / g;
        let mut keep = vec![false; rows];
        // Low band: k in [0, m).
        for row in keep.iter_mut().take(m.div_ceil(g)) {
            *row = true;
        }
        // High band: k in [N - m + 1, N) (the conjugate mirrors of 1..m).
        if m >= 2 {
            for row in keep.iter_mut().skip((n - m + 1) / g) {
                *row = true;
            }
        }
        keep.iter()
            .enumerate()
            .filter_map(|(a, &k)| k.then_some(a))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presets() -> [PlanLimits; 3] {
        [
            PlanLimits::cuda_sm90(),
            PlanLimits::vulkan(49152),
            PlanLimits::cpu(),
        ]
    }

    #[test]
    fn every_size_and_preset_builds_a_consistent_plan() {
        for limits in presets() {
            for size in FftSize::range(16, 1 << 22) {
                let plan = MonarchPlan::new(size, &limits).unwrap();
                let n = size.len();
                assert_eq!(plan.size(), size);
                assert_eq!(plan.factors().iter().product::<usize>(), n);
                assert_eq!(plan.order(), plan.factors().len());
                for &f in plan.factors() {
                    assert!(f.is_power_of_two() && (2..=limits.max_factor).contains(&f));
                }
                // Passes cover the stages in order; only the last one is fused, and it fits.
                let mut next = 0;
                for (i, pass) in plan.passes().iter().enumerate() {
                    assert_eq!(pass.stages.start, next);
                    assert!(pass.stages.end > pass.stages.start);
                    next = pass.stages.end;
                    let last = i + 1 == plan.passes().len();
                    assert_eq!(pass.on_chip, last, "{size} {limits:?}");
                    let bytes = plan.block_len(pass.stages.start) * limits.bytes_per_element;
                    assert_eq!(bytes <= limits.on_chip_bytes, pass.on_chip);
                }
                assert_eq!(next, plan.order());
                assert_eq!(plan.global_passes(), plan.passes().len() - 1);
                assert_eq!(plan.block_len(0), n);
                assert_eq!(plan.block_len(plan.order()), 1);
                for s in 0..plan.order() {
                    assert_eq!(plan.block_len(s), plan.factors()[s] * plan.stride(s));
                }

                // Index maps are mutually inverse permutations.
                if n <= 1 << 16 {
                    let mut seen = vec![false; n];
                    for pos in 0..n {
                        let k = plan.frequency_at(pos);
                        assert!(!seen[k]);
                        seen[k] = true;
                        assert_eq!(plan.position_of(k), pos);
                    }
                } else {
                    let step = (n / 4093) | 1;
                    for pos in (0..n).step_by(step).chain([n - 1]) {
                        let k = plan.frequency_at(pos);
                        assert!(k < n);
                        assert_eq!(plan.position_of(k), pos);
                        assert_eq!(plan.frequency_at(plan.position_of(pos)), pos);
                    }
                }
            }
        }
    }

    #[test]
    fn index_maps_match_the_digit_definition() {
        let plan =
            MonarchPlan::new(FftSize::new(1 << 10).unwrap(), &PlanLimits::cuda_sm90()).unwrap();
        let f = plan.factors().to_vec();
        for pos in 0..plan.size().len() {
            let mut k = 0;
            let mut weight = 1;
            for (s, &ns) in f.iter().enumerate() {
                let ks = (pos / plan.stride(s)) % ns;
                k += weight * ks;
                weight *= ns;
            }
            assert_eq!(plan.frequency_at(pos), k);
        }
    }

    #[test]
    fn factors_are_balanced_near_preferred() {
        let limits = PlanLimits::cuda_sm90();
        let f = |n: usize| {
            MonarchPlan::new(FftSize::new(n).unwrap(), &limits)
                .unwrap()
                .factors()
                .to_vec()
        };
        assert_eq!(f(16), vec![16]);
        assert_eq!(f(32), vec![8, 4]);
        assert_eq!(f(256), vec![16, 16]);
        assert_eq!(f(1 << 12), vec![16, 16, 16]);
        assert_eq!(f(1 << 22), vec![16, 16, 16, 16, 8, 8]);
        let big = MonarchPlan::new(FftSize::new(FftSize::MAX).unwrap(), &limits).unwrap();
        assert_eq!(big.factors().iter().product::<usize>(), FftSize::MAX);
        // 2^16 complex f16 = 256 KiB does not fit 227 KiB; 2^12 does.
        let p = MonarchPlan::new(FftSize::new(1 << 16).unwrap(), &limits).unwrap();
        assert_eq!(p.factors(), &[16, 16, 16, 16]);
        assert_eq!(p.global_passes(), 1);
        assert_eq!(p.passes()[1].stages, 1..4);
    }

    #[test]
    fn impossible_limits_are_rejected() {
        let n = FftSize::new(1024).unwrap();
        let base = PlanLimits::cuda_sm90();
        for bad in [
            PlanLimits {
                max_factor: 1,
                ..base
            },
            PlanLimits {
                preferred_factor: 128,
                ..base
            },
            PlanLimits {
                preferred_factor: 0,
                ..base
            },
            PlanLimits {
                bytes_per_element: 0,
                ..base
            },
            PlanLimits {
                on_chip_bytes: 64 * 4 - 1,
                ..base
            },
            PlanLimits {
                bytes_per_element: usize::MAX,
                ..base
            },
        ] {
            assert!(matches!(
                MonarchPlan::new(n, &bad),
                Err(CoreError::NoPlan { size: 1024, .. })
            ));
        }
        // Tiny but possible: every stage is a global pass except the last.
        let tiny = PlanLimits {
            max_factor: 2,
            preferred_factor: 2,
            on_chip_bytes: 8,
            bytes_per_element: 4,
        };
        let p = MonarchPlan::new(n, &tiny).unwrap();
        assert_eq!(p.factors(), &[2; 10]);
        assert_eq!(p.global_passes(), 9);
    }

    #[test]
    fn cache_shares_plans() {
        let n = FftSize::new(4096).unwrap();
        let a = MonarchPlan::cached(n, &PlanLimits::cpu()).unwrap();
        let b = MonarchPlan::cached(n, &PlanLimits::cpu()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, MonarchPlan::new(n, &PlanLimits::cpu()).unwrap());
        let c = MonarchPlan::cached(n, &PlanLimits::cuda_sm90()).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn last_stage_rows_cover_kept_frequencies() {
        for n in [16usize, 64, 1 << 10, 1 << 13] {
            for limits in presets() {
                let plan = MonarchPlan::new(FftSize::new(n).unwrap(), &limits).unwrap();
                let g = plan.frequency_block_len();
                let last = *plan.factors().last().unwrap();
                assert_eq!(g * last, n);
                for m in [0, 1, 2, 3, g - 1, g, g + 1, n / 2, n / 2 + 1, n, n + 5] {
                    let rows = plan.last_stage_rows_for_kept(m);
                    let mut needed = vec![false; last];
                    for k in 0..n {
                        let kept = k < m || (m > 0 && k > n - m.min(n));
                        if kept {
                            let row = k / g;
                            needed[row] = true;
                            // The digit k_{p-1} is the last-stage row.
                            let pos = plan.position_of(k);
                            assert_eq!(pos % last, row);
                        }
                    }
                    let want: Vec<usize> = (0..last).filter(|&a| needed[a]).collect();
                    assert_eq!(rows, want, "n={n} m={m}");
                }
            }
        }
    }
}
