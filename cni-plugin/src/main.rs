//! `rackline`: executed by the container runtime with CNI_* variables and the
//! network configuration on stdin. Wiring only.

use std::io::Read;

fn main() {
    let vars = std::env::vars().collect();
    let mut stdin = Vec::new();
    // VERSION may come with an empty or closed stdin; a read error is
    // reported by the config parser as undecodable input.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let code = rackline_cni::run(&vars, &stdin, &mut std::io::stdout().lock());
    std::process::exit(code);
}
