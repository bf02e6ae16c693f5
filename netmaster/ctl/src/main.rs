//! Wiring only: parse flags (clap exits 2 on usage errors), run one command,
//! print the error and map it to the exit code of CONTRACTS.md.

use std::process::ExitCode;

use clap::Parser as _;
use rackline_ctl::cli::{self, Cli, EXIT_REFUSED};

fn main() -> ExitCode {
    let args = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("racklinectl: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match rt.block_on(cli::run(args, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("racklinectl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
