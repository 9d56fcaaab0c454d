//! The `fftconv` binary: see `fftconv --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::install_panic_hook();
    cli::main_with_args(std::env::args_os().skip(1))
}
