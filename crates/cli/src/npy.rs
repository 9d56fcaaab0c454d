//! Minimal `.npy` reading (f32/f64/f16, either byte order, C order) and writing (f32, v1.0).
//!
//! The format: the magic `\x93NUMPY`, a version byte pair (1.0, 2.0 or 3.0), the header length
//! (little-endian `u16` for 1.0, `u32` for 2.0/3.0), then a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a final
//! `'\n'` so that the data starts at a multiple of 64 bytes, then the raw data.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// The magic bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Alignment of the data start (numpy's `ARRAY_ALIGN`).
pub const ALIGN: usize = 64;
/// Longest header this reader accepts (numpy accepts 10 000 bytes by default).
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// The most dimensions NumPy gives an array (`NPY_MAXDIMS`, NumPy 2): a longer shape is
/// refused before it is echoed in an error message.
const MAX_DIMS: usize = 64;
/// Deepest nesting of tuples/lists/dicts the header parser accepts.
const MAX_DEPTH: usize = 16;

/// An array read from a `.npy` file, converted to f32, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The element type the file stored.
    pub dtype: NpyDType,
}

/// The element types this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDType {
    F16,
    F32,
    F64,
}

impl NpyDType {
    fn size(self) -> usize {
        match self {
            NpyDType::F16 => 2,
            NpyDType::F32 => 4,
            NpyDType::F64 => 8,
        }
    }
}

/// Why a `.npy` file could not be read or written.
#[derive(Debug)]
pub enum NpyError {
    /// Reading or writing the file failed.
    Io(std::io::Error),
    /// The file does not start with `\x93NUMPY`.
    BadMagic,
    /// A format version other than 1.0, 2.0 or 3.0.
    UnsupportedVersion(u8, u8),
    /// The file ends inside the preamble or the header.
    TruncatedHeader { needed: usize, got: usize },
    /// The header is not a dict with valid 'descr', 'fortran_order' and 'shape'.
    BadHeader(String),
    /// A 'descr' other than f2, f4 or f8 floats.
    UnsupportedDtype(String),
    /// `fortran_order: True` (only C order is supported).
    FortranOrder,
    /// Fewer data bytes than the shape needs.
    TruncatedData {
        shape: Vec<usize>,
        needed: usize,
        got: usize,
    },
    /// More data bytes than the shape needs, or a shape too large to address.
    SizeMismatch {
        shape: Vec<usize>,
        needed: Option<usize>,
        got: usize,
    },
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NpyError::Io(e) => write!(f, "{e}"),
            NpyError::BadMagic => f.write_str("not a .npy file (bad magic, expected \\x93NUMPY)"),
            NpyError::UnsupportedVersion(a, b) => {
                write!(f, "unsupported .npy format version {a}.{b} (expected 1.0, 2.0 or 3.0)")
            }
            NpyError::TruncatedHeader { needed, got } => write!(
                f,
                "truncated .npy file: the header needs {needed} bytes, the file has {got}"
            ),
            NpyError::BadHeader(why) => write!(f, "malformed .npy header: {why}"),
            NpyError::UnsupportedDtype(d) => write!(
                f,
                "unsupported .npy dtype '{d}' (expected float32 '<f4'; '<f8' and '<f2' are converted)"
            ),
            NpyError::FortranOrder => f.write_str(
                "Fortran-order .npy arrays are not supported (save a C-contiguous array)",
            ),
            NpyError::TruncatedData { shape, needed, got } => write!(
                f,
                "truncated .npy data: shape {} needs {needed} bytes, the file has {got}",
                py_shape(shape)
            ),
            NpyError::SizeMismatch {
                shape,
                needed: Some(needed),
                got,
            } => write!(
                f,
                ".npy shape/data size mismatch: shape {} needs {needed} data bytes, the file has {got}",
                py_shape(shape)
            ),
            NpyError::SizeMismatch {
                shape,
                needed: None,
                got,
            } => write!(
                f,
                ".npy shape/data size mismatch: shape {} is too large (the file has {got} data bytes)",
                py_shape(shape)
            ),
        }
    }
}

impl std::error::Error for NpyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NpyError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for NpyError {
    fn from(e: std::io::Error) -> Self {
        NpyError::Io(e)
    }
}

/// Reads a `.npy` file (see [`parse`]).
pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    parse(&std::fs::read(path)?)
}

/// Parses the bytes of a `.npy` file into f32 data.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::BadMagic);
    }
    if bytes.len() < 8 {
        return Err(NpyError::TruncatedHeader {
            needed: 8,
            got: bytes.len(),
        });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(NpyError::UnsupportedVersion(major, minor)),
    };
    let preamble = 8 + len_bytes;
    if bytes.len() < preamble {
        return Err(NpyError::TruncatedHeader {
            needed: preamble,
            got: bytes.len(),
        });
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    if header_len > MAX_HEADER_LEN {
        return Err(NpyError::BadHeader(format!(
            "header length {header_len} exceeds {MAX_HEADER_LEN} bytes"
        )));
    }
    let data_start = preamble + header_len;
    if bytes.len() < data_start {
        return Err(NpyError::TruncatedHeader {
            needed: data_start,
            got: bytes.len(),
        });
    }
    let text = std::str::from_utf8(&bytes[preamble..data_start])
        .map_err(|_| NpyError::BadHeader("header is not valid text".into()))?;
    let header = parse_header(text)?;
    if header.fortran_order {
        return Err(NpyError::FortranOrder);
    }
    let data = &bytes[data_start..];
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    let needed = count.and_then(|c| c.checked_mul(header.dtype.size()));
    let Some(needed) = needed else {
        return Err(NpyError::SizeMismatch {
            shape: header.shape,
            needed: None,
            got: data.len(),
        });
    };
    if data.len() < needed {
        return Err(NpyError::TruncatedData {
            shape: header.shape,
            needed,
            got: data.len(),
        });
    }
    if data.len() > needed {
        return Err(NpyError::SizeMismatch {
            shape: header.shape,
            needed: Some(needed),
            got: data.len(),
        });
    }
    let big = header.big_endian;
    let values: Vec<f32> = match header.dtype {
        NpyDType::F32 => data
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect(),
        NpyDType::F64 => data
            .chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                let x = if big {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                };
                x as f32
            })
            .collect(),
        NpyDType::F16 => data
            .chunks_exact(2)
            .map(|c| {
                let b = [c[0], c[1]];
                let h = if big {
                    half::f16::from_be_bytes(b)
                } else {
                    half::f16::from_le_bytes(b)
                };
                h.to_f32()
            })
            .collect(),
    };
    Ok(NpyArray {
        shape: header.shape,
        data: values,
        dtype: header.dtype,
    })
}

/// Encodes f32 data of `shape` as a C-order `'<f4'` `.npy` file (version 1.0, or 2.0 when the
/// header does not fit 1.0's 16-bit length).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, NpyError> {
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(data.len()) {
        return Err(NpyError::SizeMismatch {
            shape: shape.to_vec(),
            needed: count.and_then(|c| c.checked_mul(4)),
            got: data.len() * 4,
        });
    }
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
        py_shape(shape)
    );
    // Preamble + dict + '\n', padded with spaces to a multiple of ALIGN.
    let (version, len_bytes) = if 10 + dict.len() + ALIGN <= u16::MAX as usize {
        (1u8, 2usize)
    } else {
        (2u8, 4usize)
    };
    let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
    let pad = (ALIGN - unpadded % ALIGN) % ALIGN;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(unpadded + pad + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if len_bytes == 2 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        let len = u32::try_from(header_len)
            .map_err(|_| NpyError::BadHeader("header too long to encode".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    debug_assert_eq!(out.len() % ALIGN, 0);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

/// A shape as Python writes a tuple: `()`, `(5,)`, `(2, 3)`.
pub fn py_shape(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

#[derive(Debug)]
struct Header {
    dtype: NpyDType,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn parse_header(text: &str) -> Result<Header, NpyError> {
    let bad = |why: &str| NpyError::BadHeader(why.to_string());
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value(0).map_err(NpyError::BadHeader)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(bad("unexpected text after the header dict"));
    }
    let Value::Dict(entries) = value else {
        return Err(bad("the header is not a dict"));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| NpyError::BadHeader(format!("missing key '{key}'")))
    };
    let (dtype, big_endian) = match get("descr")? {
        Value::Str(d) => parse_descr(d)?,
        _ => return Err(NpyError::UnsupportedDtype("<structured>".into())),
    };
    let fortran_order = match get("fortran_order")? {
        Value::Bool(b) => *b,
        _ => return Err(bad("'fortran_order' is not True or False")),
    };
    let shape = match get("shape")? {
        Value::Tuple(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(d) => Ok(*d),
                _ => Err(bad(
                    "'shape' holds something other than non-negative integers",
                )),
            })
            .collect::<Result<Vec<usize>, _>>()?,
        _ => return Err(bad("'shape' is not a tuple")),
    };
    if shape.len() > MAX_DIMS {
        return Err(NpyError::BadHeader(format!(
            "'shape' has {} dimensions; NumPy allows at most {MAX_DIMS}",
            shape.len()
        )));
    }
    Ok(Header {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

fn parse_descr(d: &str) -> Result<(NpyDType, bool), NpyError> {
    let native_big = cfg!(target_endian = "big");
    let (big, kind) = match d.as_bytes().first() {
        Some(b'<') => (false, &d[1..]),
        Some(b'>') => (true, &d[1..]),
        Some(b'=') => (native_big, &d[1..]),
        _ => (native_big, d),
    };
    let dtype = match kind {
        "f2" | "e" => NpyDType::F16,
        "f4" | "f" => NpyDType::F32,
        "f8" | "d" => NpyDType::F64,
        _ => return Err(NpyError::UnsupportedDtype(d.to_string())),
    };
    Ok((dtype, big))
}

/// The Python literal values a `.npy` header may hold.
#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    None,
    Int(usize),
    Tuple(Vec<Value>),
    Dict(Vec<(String, Value)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("header nests too deeply".into());
        }
        match self.peek() {
            Some(b'{') => self.dict(depth),
            Some(b'(') => self.seq(b')', depth),
            Some(b'[') => self.seq(b']', depth),
            Some(b'\'') | Some(b'"') => self.string().map(Value::Str),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::None),
                    w => Err(format!("unexpected word '{}'", String::from_utf8_lossy(w))),
                }
            }
            Some(c) => Err(format!("unexpected '{}' at byte {}", c as char, self.i)),
            None => Err("unexpected end of header".into()),
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        // Keys seen so far, for the duplicate check (a scan of `entries` would make a header of
        // many keys quadratic: seconds for one of MAX_HEADER_LEN bytes).
        let mut keys = HashSet::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Value::Dict(entries));
            }
            let key = match self.peek() {
                Some(b'\'') | Some(b'"') => self.string()?,
                _ => return Err(format!("expected a string key at byte {}", self.i)),
            };
            if !keys.insert(key.clone()) {
                return Err(format!("duplicate key '{key}'"));
            }
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
            }
        }
    }

    fn seq(&mut self, close: u8, depth: usize) -> Result<Value, String> {
        self.i += 1; // the opening bracket, checked by the caller
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(Value::Tuple(items));
            }
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "expected ',' or '{}' at byte {}",
                        close as char, self.i
                    ))
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else { break };
                    self.i += 1;
                    out.push(e);
                }
                c if c == quote => {
                    return String::from_utf8(out).map_err(|_| "string is not valid text".into())
                }
                c => out.push(c),
            }
        }
        Err("unterminated string in header".into())
    }

    fn int(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        let n = digits
            .parse::<usize>()
            .map_err(|_| format!("integer {digits} is out of range"))?;
        // Python 2 wrote long integers as `3L`.
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        Ok(Value::Int(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a file with an arbitrary header text and version.
    fn file_with(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        let header = format!("{dict}\n");
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn round_trip_f32() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        for shape in [vec![2, 3, 4], vec![24], vec![4, 6]] {
            let bytes = encode_f32(&shape, &data).unwrap();
            let back = parse(&bytes).unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(back.data, data);
            assert_eq!(back.dtype, NpyDType::F32);
        }
        let scalar = parse(&encode_f32(&[], &[7.5]).unwrap()).unwrap();
        assert_eq!((scalar.shape, scalar.data), (vec![], vec![7.5]));
        let empty = parse(&encode_f32(&[0, 3], &[]).unwrap()).unwrap();
        assert_eq!((empty.shape, empty.data.len()), (vec![0, 3], 0));
    }

    #[test]
    fn header_matches_numpy_and_pads_to_64() {
        let bytes = encode_f32(&[2, 3], &[0.0; 6]).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let data_start = 10 + header_len;
        assert_eq!(data_start % 64, 0);
        assert_eq!(data_start, 128); // 10 + 59 + 1 bytes, padded
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let text = std::str::from_utf8(&bytes[10..data_start]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(text.ends_with('\n'));
        assert!(text[..text.len() - 1].trim_end().ends_with('}'));
        assert_eq!(bytes.len(), 128 + 6 * 4);
        for rank in 0..8 {
            let shape = vec![1usize; rank];
            let bytes = encode_f32(&shape, &[1.0]).unwrap();
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0, "rank {rank}");
            assert_eq!(bytes[9 + header_len], b'\n');
        }
    }

    #[test]
    fn reads_v2_and_v3_headers_and_other_dtypes() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        for version in [2, 3] {
            let f = file_with(
                version,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                &data,
            );
            let a = parse(&f).unwrap();
            assert_eq!((a.shape, a.data), (vec![2], vec![1.5, -2.0]));
        }
        // f8 little-endian, Python 2 longs, double quotes, other key order.
        let d8: Vec<u8> = [0.25f64, 1e3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f = file_with(
            1,
            "{\"shape\": (1L, 2L), \"fortran_order\": False, \"descr\": \"<f8\"}",
            &d8,
        );
        let a = parse(&f).unwrap();
        assert_eq!(
            (a.shape, a.data, a.dtype),
            (vec![1, 2], vec![0.25, 1000.0], NpyDType::F64)
        );
        // f2 and big-endian f4.
        let d2: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-4.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f = file_with(
            1,
            "{'descr': '<f2', 'fortran_order': False, 'shape': (2,)}",
            &d2,
        );
        assert_eq!(parse(&f).unwrap().data, vec![0.5, -4.0]);
        let dbe: Vec<u8> = 3.0f32.to_be_bytes().to_vec();
        let f = file_with(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': ()}",
            &dbe,
        );
        assert_eq!(parse(&f).unwrap().data, vec![3.0]);
    }

    #[test]
    fn rejects_fortran_order() {
        let f = file_with(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &[0u8; 16],
        );
        assert!(matches!(parse(&f), Err(NpyError::FortranOrder)));
    }

    #[test]
    fn rejects_bad_magic_and_versions() {
        let mut f = encode_f32(&[2], &[1.0, 2.0]).unwrap();
        f[1] = b'X';
        assert!(matches!(parse(&f), Err(NpyError::BadMagic)));
        assert!(matches!(parse(b""), Err(NpyError::BadMagic)));
        assert!(matches!(
            parse(b"hello world, not numpy"),
            Err(NpyError::BadMagic)
        ));
        let mut f = encode_f32(&[2], &[1.0, 2.0]).unwrap();
        f[6] = 4;
        assert!(matches!(parse(&f), Err(NpyError::UnsupportedVersion(4, 0))));
    }

    #[test]
    fn rejects_truncation_size_mismatch_and_bad_dtypes() {
        let f = encode_f32(&[2, 3], &[1.0; 6]).unwrap();
        for cut in [7, 9, 30, 63] {
            assert!(
                matches!(parse(&f[..cut]), Err(NpyError::TruncatedHeader { .. })),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse(&f[..f.len() - 1]),
            Err(NpyError::TruncatedData { .. })
        ));
        let mut longer = f.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(matches!(parse(&longer), Err(NpyError::SizeMismatch { .. })));
        let huge = file_with(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16)}",
            &[],
        );
        assert!(matches!(
            parse(&huge),
            Err(NpyError::SizeMismatch { needed: None, .. })
        ));
        for descr in ["<i4", "|u1", "<c8", "<f16"] {
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,)}}");
            let f = file_with(1, &dict, &[0; 16]);
            assert!(
                matches!(parse(&f), Err(NpyError::UnsupportedDtype(_))),
                "{descr}"
            );
        }
        let structured = file_with(
            1,
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
            &[0; 4],
        );
        assert!(matches!(
            parse(&structured),
            Err(NpyError::UnsupportedDtype(_))
        ));
        for dict in [
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)",
            "((((((((((((((((((((((((((((((((((((((",
            "['descr']",
            "",
        ] {
            let f = file_with(1, dict, &[0; 4]);
            assert!(matches!(parse(&f), Err(NpyError::BadHeader(_))), "{dict}");
        }
    }

    #[test]
    fn shapes_of_more_than_64_dimensions_are_refused() {
        let dims = |n: usize| vec!["1"; n].join(",");
        let dict = |n: usize| {
            format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},)}}",
                dims(n)
            )
        };
        let data = 1.0f32.to_le_bytes();
        assert_eq!(
            parse(&file_with(2, &dict(64), &data)).unwrap().data,
            vec![1.0]
        );
        for n in [65, 300_000] {
            let err = parse(&file_with(3, &dict(n), &data))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("'shape' has {n} dimensions")),
                "{err}"
            );
            assert!(err.len() < 200, "a short message: {} bytes", err.len());
        }
    }

    #[test]
    fn headers_of_many_keys_parse_in_linear_time() {
        // 100 000 distinct keys about fill a MAX_HEADER_LEN header; checking each against every
        // earlier one took ~8 s (release) before.
        let keys: Vec<String> = (0..100_000).map(|i| format!("'{i:x}':0")).collect();
        let dict = format!(
            "{{{}, 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}}",
            keys.join(",")
        );
        assert!(dict.len() < MAX_HEADER_LEN);
        let f = file_with(2, &dict, &1.0f32.to_le_bytes());
        let started = std::time::Instant::now();
        assert_eq!(parse(&f).unwrap().data, vec![1.0]);
        let seconds = started.elapsed().as_secs_f64();
        assert!(seconds < 2.0, "{seconds} s for a header of many keys");
        let dup = file_with(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'descr': '<f4'}",
            &[0; 4],
        );
        assert!(matches!(parse(&dup), Err(NpyError::BadHeader(_))));
    }

    #[test]
    fn encode_rejects_mismatched_data() {
        assert!(matches!(
            encode_f32(&[2, 3], &[0.0; 5]),
            Err(NpyError::SizeMismatch { .. })
        ));
    }
}
