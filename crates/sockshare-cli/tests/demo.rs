//! `sockshare demo` end to end, TCP and UDP: two real processes, the info over the
//! target's stdin. Portable: on Windows (under Wine in `.ci/windows`) it exercises the
//! native WSADuplicateSocketW backend.

use std::process::Command;

fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sockshare"))
        .arg("demo")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_tcp_runs_every_step() {
    let out = demo(&[]);
    for n in 1..=10 {
        assert!(
            out.contains(&format!("{n:>2}. ")),
            "step {n} missing:\n{out}"
        );
    }
    assert!(out.contains("the shared socket is closed"), "{out}");
}

#[test]
fn demo_udp_runs_every_step() {
    let out = demo(&["--udp"]);
    assert!(out.contains("received \"hello from target pid"), "{out}");
}

#[test]
fn demo_late_shares_before_the_target_has_a_session() {
    let out = demo(&["--late"]);
    assert!(out.contains("it starts no sharing session"), "{out}");
    assert!(
        out.contains("started its sharing session (WSAStartup) only now"),
        "{out}"
    );
    assert!(out.contains("accepted"), "{out}");
}
