//! Declares the `loom` cfg used by the wake-up model test.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
