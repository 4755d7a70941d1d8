//! Linking C programs to the `libws2_32` cargo built for the running test binary. Shared
//! by ws2_32's `c_interface` and sockshare-cli's `c_dispatch_worker` (which includes this
//! file by path: sockshare-cli depends on ws2_32, so cargo builds the library for it too).

use std::path::PathBuf;
use std::process::Command;

/// Where cargo put `libws2_32.so` and `.a` for this test binary: it builds every crate
/// type of the library, in `deps` beside the test, before the tests run.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("deps directory");
    let found = [deps, deps.parent().unwrap_or(deps)]
        .into_iter()
        .find(|d| d.join("libws2_32.so").exists())
        .unwrap_or_else(|| panic!("libws2_32.so not found beside {}", exe.display()))
        .to_path_buf();
    found
}

/// Adds to a `cc` command what links it to the shared library of [`lib_dir`], found at
/// run time through an rpath.
pub fn link_shared(cc: &mut Command) {
    let lib = lib_dir();
    // DT_RPATH, not RUNPATH: `cargo test` puts target/debug first in LD_LIBRARY_PATH,
    // which outranks a RUNPATH, and a `libws2_32.so` a `cargo build` left there would be
    // tested instead of this build's.
    cc.arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{},--disable-new-dtags", lib.display()))
        .arg("-lws2_32");
}
