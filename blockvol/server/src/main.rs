//! `keel-volume`: the keel volume server (see `keel-volume --help`).

fn main() {
    keel_volume::cli::main();
}
