//! `rackline`: executed by the container runtime with CNI_* variables and the
//! network configuration on stdin. Wiring only.

use std::os::fd::AsFd;

fn main() {
    rackline_cni::steps::process_started();
    // The environment as the runtime gave it: `vars_os`, because
    // `std::env::vars` panics on a variable that is not UTF-8.
    let env = std::env::vars_os().collect();
    // A plain descriptor (no std buffering between poll and read); a closed
    // stdin reads as empty.
    let (stdin, stdin_problem) = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => rackline_cni::stdin::read_bounded(
            std::fs::File::from(fd),
            rackline_cni::stdin::MAX_STDIN,
            rackline_cni::stdin::STDIN_DEADLINE,
        ),
        Err(_) => (Vec::new(), None),
    };
    rackline_cni::steps::record(
        "stdin",
        rackline_cni::steps::main_ns(),
        rackline_cni::steps::now_ns(),
    );
    let inv = rackline_cni::Invocation {
        env,
        stdin,
        stdin_problem,
    };
    let code = rackline_cni::run(&inv, &mut std::io::stdout().lock());
    std::process::exit(code);
}
