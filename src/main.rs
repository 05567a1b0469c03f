//! The `mcgrad` binary: parses the command line, runs the subcommand, and prints any error
//! on one line (`error: ...`) with exit code 2 for bad input or 1 for a failure while running.

mod cli;

use clap::Parser;

fn main() {
    // Before any thread exists: setting an environment variable is then safe.
    mcgrad::gpu::quiet_mesa();
    let cli = cli::Cli::parse();
    if let Err(err) = cli::dispatch(cli) {
        eprintln!("error: {err}");
        std::process::exit(err.exit_code());
    }
}
