//! `sockshare bench-reload` runs its three modes to the end and reports what the reloads
//! did. Only outcomes that do not depend on timing are checked: how many reloads were
//! asked for and how they ended, which generations served; never how many requests failed.
#![cfg(target_os = "linux")]

mod common;

/// Runs `bench-reload ARGS --json` and returns its JSON line.
fn bench_reload(args: &[&str]) -> String {
    common::sockshare(&[&["bench-reload"], args, &["--json"]].concat())
}

/// Two restarts 0.1 s apart, two clients, in `mode` (and `--udp` if asked).
fn short_run(mode: &str, udp: bool) -> String {
    let mut args = vec!["--mode", mode, "--reloads", "2", "--interval", "0.1"];
    args.extend(["--clients", "2"]);
    if udp {
        args.push("--udp");
    }
    bench_reload(&args)
}

fn has(json: &str, fields: &[&str]) {
    for field in fields {
        assert!(json.contains(field), "no {field} in {json}");
    }
}

#[test]
fn quick_run_reloads_five_times() {
    let json = bench_reload(&["--quick", "--clients", "2"]);
    has(
        &json,
        &[
            "\"mode\": \"serve\"",
            "\"reloads\": 5, \"reloads_ok\": 5, \"reloads_failed\": 0",
            "\"generations_served\": 6",
        ],
    );
}

#[test]
fn broken_reloads_all_fail_and_the_first_generation_serves_on() {
    let json = short_run("broken", false);
    has(
        &json,
        &[
            "\"reloads_ok\": 0, \"reloads_failed\": 2",
            "exited (status 1) before it was ready",
            "\"generations_served\": 1",
        ],
    );
    // Whatever answered was generation 1.
    let (_, answers) = json.split_once("\"answers_per_generation\": {").unwrap();
    let answers = &answers[..answers.find('}').unwrap()];
    assert!(
        answers
            .split(", ")
            .all(|a| a.is_empty() || a.starts_with("\"1\": ")),
        "{json}"
    );
}

#[test]
fn naive_restarts_number_their_serves() {
    let json = short_run("naive", true);
    has(
        &json,
        &[
            "\"proto\": \"udp\"",
            "\"reloads_ok\": 2, \"reloads_failed\": 0",
            "\"generations_served\": 3",
        ],
    );
}
