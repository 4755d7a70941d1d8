//! `sockshare demo` end to end, TCP and UDP: two real processes, the info over the
//! target's stdin. Portable: on Windows (under Wine in `.ci/windows`) it exercises the
//! native WSADuplicateSocketW backend.

mod common;

fn demo(args: &[&str]) -> String {
    common::sockshare(&[&["demo"], args].concat())
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
