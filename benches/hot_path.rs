//! Placeholder until the benches land (issue #6).
fn main() {}
