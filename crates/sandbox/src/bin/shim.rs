//! `paddock-sandbox-shim`: a standalone shim executable (tests and benchmarks); the `paddock`
//! binary runs the same code from a hidden subcommand.

fn main() {
    std::process::exit(paddock_sandbox::namespace::shim_main());
}
