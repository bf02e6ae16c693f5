//! `rackline`: executed by the container runtime with CNI_* variables and the
//! network configuration on stdin. Wiring only.

fn main() {
    // The environment as the runtime gave it: `vars_os`, because
    // `std::env::vars` panics on a variable that is not UTF-8.
    let env = std::env::vars_os().collect();
    let (stdin, stdin_problem) = rackline_cni::stdin::read_bounded(
        std::io::stdin(),
        rackline_cni::stdin::MAX_STDIN,
        rackline_cni::stdin::STDIN_DEADLINE,
    );
    let inv = rackline_cni::Invocation {
        env,
        stdin,
        stdin_problem,
    };
    let code = rackline_cni::run(&inv, &mut std::io::stdout().lock());
    std::process::exit(code);
}
