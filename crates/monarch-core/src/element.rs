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
            DType::F16 => f16::from_f64(x).to_f64(),
            DType::Bf16 => bf16::from_f64(x).to_f64(),
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
                <$t>::from_f64(x)
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
}
