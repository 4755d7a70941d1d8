//! What the command's test files share.
// Each test file is a crate of its own and uses only some of these.
#![allow(dead_code)]

use std::process::Command;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
#[allow(unused_imports)]
pub use linux::*;

/// Runs `sockshare ARGS`, checks that it succeeded, and returns its stdout.
pub fn sockshare(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sockshare"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sockshare {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
