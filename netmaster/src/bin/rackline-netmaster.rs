//! Wiring only: parse flags, set up logging, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use rackline_netmaster::daemon::{self, NetmasterArgs};

fn main() -> ExitCode {
    let args = NetmasterArgs::parse();
    daemon::init_tracing(&args.log_level);
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: NetmasterArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let shutdown = daemon::termination_signal().context("cannot install signal handlers")?;
        daemon::run(args, shutdown).await?;
        Ok(())
    })
}
