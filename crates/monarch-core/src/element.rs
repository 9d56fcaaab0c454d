//! I/O element types: [`DType`] names them, [`Element`] converts them to and from f32/f64.

use half::{bf16, f16};

/// The element type of activations, gates and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// Lower-case name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Rounds an f64 to this dtype and back (what storing a value in it does).
    pub fn round_f64(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::F16 => <f16 as Element>::from_f64(x).to_f64(),
            DType::Bf16 => <bf16 as Element>::from_f64(x).to_f64(),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::Bf16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, f16 or bf16)"
            )),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A scalar element type the library reads and writes: `f32`, `half::f16` or `half::bf16`.
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + Default + PartialEq + std::fmt::Debug + 'static
{
    /// The [`DType`] this type is.
    const DTYPE: DType;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Rounds an f64 to this type once (not through f32).
    fn from_f64(x: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// Widens a slice into f32s (`dst.len() == src.len()`).
    fn load_f32(src: &[Self], dst: &mut [f32]);
    /// Rounds f32s into a slice of this type (`dst.len() == src.len()`).
    fn store_f32(src: &[f32], dst: &mut [Self]);
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

/// `x` rounded to f32 by round-to-odd (truncated, and the last bit set where that was inexact):
/// rounding that to nearest-even at 22 or fewer significant bits (f16, bf16) is the correct
/// rounding of `x` itself. `half`'s own `from_f64` (2.7, its software path, which bf16 always
/// takes) misrounds values just above a tie, e.g. f32 0xbf0c8006 to bf16 0xbf0c instead of
/// 0xbf0d (half-rs issue 151).
fn f32_round_to_odd(x: f64) -> f32 {
    let r = x as f32;
    if x.is_nan() || f64::from(r) == x {
        return r;
    }
    let mut bits = r.to_bits();
    if f64::from(r).abs() > x.abs() {
        bits -= 1; // one step toward zero (sign and magnitude): r rounded away
    }
    f32::from_bits(bits | 1)
}

macro_rules! half_element {
    ($t:ty, $dtype:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dtype;
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            fn from_f32(x: f32) -> Self {
                <$t>::from_f32(x)
            }
            fn from_f64(x: f64) -> Self {
                <$t>::from_f32(f32_round_to_odd(x))
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn load_f32(src: &[Self], dst: &mut [f32]) {
                use half::slice::HalfFloatSliceExt;
                src.convert_to_f32_slice(dst);
            }
            fn store_f32(src: &[f32], dst: &mut [Self]) {
                use half::slice::HalfFloatSliceExt;
                dst.convert_from_f32_slice(src);
            }
        }
    };
}

half_element!(f16, DType::F16);
half_element!(bf16, DType::Bf16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_once() {
        let x = 1.0f64 / 3.0;
        assert_eq!(f16::from_f64(x).to_f64(), DType::F16.round_f64(x));
        assert_eq!(bf16::from_f64(x).to_f64(), DType::Bf16.round_f64(x));
        // Just above a tie (half-rs issue 151's witnesses): rounded up.
        let above = 1.0 + 2f64.powi(-11) + 2f64.powi(-22);
        assert_eq!(<f16 as Element>::from_f64(above).to_bits(), 0x3c01);
        let above = f64::from(f32::from_bits(0xbf0c_8006));
        assert_eq!(<bf16 as Element>::from_f64(above).to_bits(), 0xbf0d);
        let src = [1.5f32, -2.25, 1e-3];
        let mut h = [f16::ZERO; 3];
        f16::store_f32(&src, &mut h);
        let mut back = [0f32; 3];
        f16::load_f32(&h, &mut back);
        assert_eq!(back[0], 1.5);
        assert_eq!(back[1], -2.25);
        assert!((back[2] - 1e-3).abs() < 1e-6);
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
        assert!("f64".parse::<DType>().is_err());
    }

    /// `T::from_f64(x)` (x >= 0 and below T's overflow), asserted to be the correct rounding:
    /// of its neighbours `lo <= x <= hi` (adjacent, so `x - lo` and `hi - x` are exact in f64),
    /// the nearer, ties to the even bits.
    fn rounded_to_nearest<T: Element>(x: f64, from_bits: fn(u16) -> T, to_bits: fn(T) -> u16) -> T {
        let r = T::from_f64(x);
        let (lo, hi) = if r.to_f64() <= x {
            (r, from_bits(to_bits(r) + 1))
        } else {
            (from_bits(to_bits(r) - 1), r)
        };
        let (dl, dh) = (x - lo.to_f64(), hi.to_f64() - x);
        let nearest = if dl < dh || (dl == dh && to_bits(lo) % 2 == 0) {
            lo
        } else {
            hi
        };
        assert_eq!(r, nearest, "{:?} of {x:e}", T::DTYPE);
        r
    }

    /// A value `offset - 2` f64 ulps from the tie of adjacent values `a < b`.
    fn near_tie(a: f64, b: f64, offset: u64) -> f64 {
        f64::from_bits(((a + b) / 2.0).to_bits().wrapping_add(offset) - 2)
    }

    #[test]
    fn f64_conversions_round_to_nearest_even() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(151);
        let mut checked = (0, 0);
        for i in 0..400_000 {
            // Random values and values a few f64 ulps from a tie of each type (positive, both
            // exponent ranges' normals and subnormals).
            let bits16: u16 = rng.random_range(0..0x7b00);
            let x = match i % 4 {
                0 => f64::from(rng.random_range(-1.0e4f32..1.0e4)) * rng.random_range(-1.0..1.0),
                1 => {
                    let (a, b) = (f16::from_bits(bits16), f16::from_bits(bits16 + 1));
                    near_tie(a.to_f64(), b.to_f64(), rng.random_range(0..5))
                }
                _ => {
                    let b16 = rng.random_range(0..0x7f7fu16);
                    let (a, b) = (bf16::from_bits(b16), bf16::from_bits(b16 + 1));
                    near_tie(a.to_f64(), b.to_f64(), rng.random_range(0..5))
                }
            };
            let x = x.abs();
            if x <= 65000.0 {
                let h = rounded_to_nearest(x, f16::from_bits, f16::to_bits);
                assert_eq!(DType::F16.round_f64(-x), -h.to_f64());
                checked.0 += 1;
            }
            let b = rounded_to_nearest(x, bf16::from_bits, bf16::to_bits);
            assert_eq!(DType::Bf16.round_f64(x), b.to_f64());
            checked.1 += 1;
        }
        assert!(checked.0 > 150_000 && checked.1 == 400_000, "{checked:?}");
        // Overflow, NaN, zero and the smallest subnormals.
        assert!(<f16 as Element>::from_f64(65520.0).is_infinite());
        assert_eq!(<f16 as Element>::from_f64(65519.9).to_f64(), 65504.0);
        assert!(<bf16 as Element>::from_f64(1e300).is_infinite());
        assert!(<bf16 as Element>::from_f64(f64::NAN).is_nan());
        assert_eq!(<bf16 as Element>::from_f64(-0.0).to_bits(), 0x8000);
        assert_eq!(<f16 as Element>::from_f64(2f64.powi(-25)).to_bits(), 0);
        assert_eq!(
            <f16 as Element>::from_f64(2f64.powi(-25) * 1.0001).to_bits(),
            1
        );
        assert_eq!(<bf16 as Element>::from_f64(1e-300).to_bits(), 0);
    }
}
