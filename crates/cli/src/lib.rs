//! `fftconv`: run long FFT convolutions on `.npy` files and list the compute backends.
//!
//! The binary (`src/main.rs`) calls [`main_with_args`]; the modules are public so that tests can
//! read and write `.npy` files the same way the tool does.

pub mod args;
pub mod atomic;
pub mod commands;
pub mod npy;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// Prefix of every error line on stderr.
pub const ERROR_PREFIX: &str = "fftconv: error: ";

/// Runs `fftconv` with the arguments after the program name; prints one error line on failure.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{ERROR_PREFIX}{}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Makes a panic (a bug, never expected on bad input) print one error line like any other error.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic".to_string()
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = what.replace('\n', "; ");
        let _ = writeln!(
            std::io::stderr().lock(),
            "{ERROR_PREFIX}internal error: {what}{at}"
        );
    }));
}
