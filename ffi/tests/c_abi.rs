//! The C ABI from C: compile `tests/abi_test.c` against `include/keel.h`,
//! link it with the library built for this test run, run it on a fresh
//! volume. A header that disagrees with the library fails to compile, link
//! or check.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the libkeel_ffi.so built for this test run
/// (`target/<profile>/deps`, beside the test executable, or its parent).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("deps dir").to_owned();
    if deps.join("libkeel_ffi.so").exists() {
        return deps;
    }
    deps.parent().expect("target dir").to_owned()
}

#[test]
fn c_program_uses_every_function() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libdir = lib_dir();
    let so = libdir.join("libkeel_ffi.so");
    assert!(
        so.exists(),
        "{} missing: the cdylib is built with the tests",
        so.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("abi_test");
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(here.join("include"))
        .arg(here.join("tests/abi_test.c"))
        .arg("-o")
        .arg(&bin)
        .arg(format!("-L{}", libdir.display()))
        .arg("-lkeel_ffi")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .output()
        .expect("cc (apt-get install gcc)");
    assert!(
        out.status.success(),
        "compile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin)
        .arg(dir.path().join("v.keel"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}
