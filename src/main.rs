//! The `mcgrad` binary: parses the command line, runs the subcommand, and prints any error
//! on one line (`error: ...`) with exit code 2 for bad input or 1 for a failure while running.

mod cli;

use clap::Parser;

fn main() {
    quiet_mesa();
    let cli = cli::Cli::parse();
    if let Err(err) = cli::dispatch(cli) {
        eprintln!("error: {err}");
        std::process::exit(err.exit_code());
    }
}

/// Mesa's drivers print `error: XDG_RUNTIME_DIR is invalid or not set` whenever that variable
/// is missing (as on servers and in CI), which reads like an mcgrad error. Give them a private
/// folder, before any thread or adapter exists.
fn quiet_mesa() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("mcgrad-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let private = std::fs::metadata(&dir)
            .map(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o777 == 0o700)
            .unwrap_or(false);
        if private {
            std::env::set_var("XDG_RUNTIME_DIR", dir);
        }
    }
}
