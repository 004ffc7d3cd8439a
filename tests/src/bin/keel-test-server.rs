//! The volume server as the end-to-end tests start it: the same command
//! line as `keel-volume` (`keel_volume::cli`), built inside this package so
//! the tests can find the binary (`CARGO_BIN_EXE_keel-test-server`).

fn main() {
    keel_volume::cli::main();
}
