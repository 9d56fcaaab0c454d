//! [`FftSize`]: a power-of-two FFT length within the range the library supports.

use crate::error::CoreError;

/// A power-of-two FFT length `N` with `FftSize::MIN <= N <= FftSize::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FftSize {
    log2: u32,
}

impl FftSize {
    /// Smallest supported FFT size.
    pub const MIN: usize = 16;
    /// Largest supported FFT size (2^27): covers causal convolutions of 2^26 steps.
    pub const MAX: usize = 1 << 27;

    /// `n` as an FFT size, or an error when it is not a power of two in range.
    pub fn new(n: usize) -> Result<Self, CoreError> {
        if !n.is_power_of_two() {
            return Err(CoreError::UnsupportedFftSize {
                size: n,
                reason: "not a power of two".into(),
            });
        }
        if !(Self::MIN..=Self::MAX).contains(&n) {
            return Err(CoreError::UnsupportedFftSize {
                size: n,
                reason: format!("outside {}..={}", Self::MIN, Self::MAX),
            });
        }
        Ok(FftSize {
            log2: n.trailing_zeros(),
        })
    }

    /// The smallest supported FFT size `>= n`.
    pub fn at_least(n: usize) -> Result<Self, CoreError> {
        let n = n.max(Self::MIN);
        let p = n
            .checked_next_power_of_two()
            .ok_or(CoreError::UnsupportedFftSize {
                size: n,
                reason: "too large".into(),
            })?;
        Self::new(p)
    }

    /// The length `N`.
    pub fn len(self) -> usize {
        1usize << self.log2
    }

    /// Always false: an FFT size is never zero (present for clippy's `len_without_is_empty`).
    pub fn is_empty(self) -> bool {
        false
    }

    /// `log2(N)`.
    pub fn log2(self) -> u32 {
        self.log2
    }

    /// Every supported size from `lo` to `hi` inclusive (both powers of two).
    pub fn range(lo: usize, hi: usize) -> impl Iterator<Item = FftSize> {
        (0..usize::BITS)
            .map(|b| 1usize << b)
            .filter(move |&n| n >= lo.max(Self::MIN) && n <= hi.min(Self::MAX))
            .map(|n| FftSize {
                log2: n.trailing_zeros(),
            })
    }
}

impl std::fmt::Display for FftSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_powers_of_two_in_range_only() {
        assert_eq!(FftSize::new(16).unwrap().len(), 16);
        assert_eq!(FftSize::new(1 << 22).unwrap().log2(), 22);
        assert!(FftSize::new(8).is_err());
        assert!(FftSize::new(48).is_err());
        assert!(FftSize::new(0).is_err());
        assert!(FftSize::new(FftSize::MAX * 2).is_err());
        assert_eq!(FftSize::at_least(1000).unwrap().len(), 1024);
        assert_eq!(FftSize::at_least(3).unwrap().len(), 16);
        assert_eq!(FftSize::range(256, 4096).count(), 5);
    }
}
