//! Project tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `cargo xtask bench [options]`: the forward-convolution benchmark sweep (see [`args::USAGE`]).
//! - `cargo xtask device-bundle`: builds the GPU machine's bundle into `.device/` (see `bundle.rs`).
//! - `cargo xtask help`: usage.

mod args;
mod bench;
mod bundle;
mod oracle;
mod report;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = argv.split_first() else {
        print!("{}", args::USAGE);
        return ExitCode::SUCCESS;
    };
    match task.as_str() {
        "bench" => match args::BenchOptions::parse(rest) {
            Ok(Some(opts)) => bench::run(&opts),
            Ok(None) => {
                print!("{}", args::USAGE);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}\n");
                eprint!("{}", args::USAGE);
                ExitCode::from(2)
            }
        },
        "device-bundle" => bundle::run(),
        "help" | "-h" | "--help" => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("error: unknown task `{other}`\n");
            eprint!("{}", args::USAGE);
            ExitCode::from(2)
        }
    }
}
