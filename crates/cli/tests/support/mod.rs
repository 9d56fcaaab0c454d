//! Helpers shared by the `fftconv` end-to-end tests: temp dirs, running the binary, `.npy` input.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use cli::npy;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One command-line argument (a string or a path).
pub type Arg<'a> = &'a dyn AsRef<std::ffi::OsStr>;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "fftconv-cli-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Names of the files in the directory, sorted.
    pub fn listing(&self) -> Vec<String> {
        listing(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names of the files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs the built `fftconv` binary.
pub fn fftconv(args: &[Arg<'_>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fftconv"));
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("failed to run fftconv")
}

pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

/// Writes an f32 `.npy` file.
pub fn save(path: &Path, shape: &[usize], data: &[f32]) {
    std::fs::write(path, npy::encode_f32(shape, data).unwrap()).unwrap();
}
