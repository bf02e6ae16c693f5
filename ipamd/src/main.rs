//! rackline-ipamd: wiring only. See the library for behaviour.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = rackline_ipamd::config::Args::parse();
    if let Err(e) = rackline_ipamd::init_tracing(&args.log_level) {
        eprintln!("rackline-ipamd: {e}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rackline-ipamd: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(rackline_ipamd::run(args.into_config())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("rackline-ipamd failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
