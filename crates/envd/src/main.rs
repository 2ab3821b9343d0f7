//! envd binary entry point (being written).
fn main() {}
