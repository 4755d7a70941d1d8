//! Tests of the C interface with real C programs, compiled by `cc` against
//! `include/winsock2.h` and the `libws2_32` that `cargo test` just built, run as real
//! processes that hand real sockets to each other (and to Rust) through pipes.
//!
//! The binary has its own small runner (`harness = false`): it runs the tests one after
//! another, so descriptor counts are not disturbed by parallel tests, and it doubles as
//! the Rust peer of the cross-language tests (`c_interface --role rust-target` or
//! `--role rust-source PID A|W`). Arguments that do not start with `-` filter tests by
//! name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ws2_32::types::{CONSTANTS, LAYOUTS};

mod linking;
use linking::{lib_dir, link_shared};

type TestResult = Result<(), String>;

/// A test: its name and its body.
type Test = (&'static str, fn() -> TestResult);

const TESTS: &[Test] = &[
    ("header_matches_rust", header_matches_rust),
    (
        "header_defines_only_known_names",
        header_defines_only_known_names,
    ),
    (
        "header_compiles_as_c_and_cxx_beside_system_headers",
        header_compiles_everywhere,
    ),
    ("errors_and_check_order", errors_and_check_order),
    ("last_error_after_bsd_calls", last_error_after_bsd_calls),
    ("fork_while_threads_are_in_the_library", fork_with_threads),
    ("fork_without_atfork_handlers", fork_without_handlers),
    ("example_scenario_between_two_processes", example_scenario),
    (
        "example_scenario_linked_statically",
        example_scenario_static,
    ),
    (
        "install_script_and_pkg_config",
        install_script_and_pkg_config,
    ),
    ("c_source_to_c_target_a_and_w", c_to_c),
    ("c_source_to_rust_target", c_to_rust),
    ("rust_source_to_c_target", rust_to_c),
    (
        "late_target_calls_wsastartup_after_the_duplicate",
        late_target,
    ),
];

const DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        std::process::exit(run_role(&args[1..]));
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let result = std::panic::catch_unwind(test).unwrap_or_else(|_| Err("panicked".into()));
        match result {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---- building and running C programs ----

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn include_dir() -> PathBuf {
    crate_dir().join("include")
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ws2_32-c");
    std::fs::create_dir_all(&dir).expect("creating the output directory");
    dir
}

fn run_compiler(mut cmd: Command) -> TestResult {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-g"];

/// Compiles C sources into an executable linked with libws2_32 (shared, found through
/// an rpath, or the static archive).
fn build_c(name: &str, sources: &[PathBuf], link_static: bool) -> Result<PathBuf, String> {
    let exe = out_dir().join(name);
    let mut cmd = Command::new("cc");
    cmd.args(C_FLAGS)
        .arg("-I")
        .arg(include_dir())
        .args(sources)
        .arg("-o")
        .arg(&exe);
    if link_static {
        // Rust's standard library needs these beside the archive.
        cmd.arg(lib_dir().join("libws2_32.a"))
            .args(["-lpthread", "-ldl", "-lm", "-lrt"]);
    } else {
        link_shared(&mut cmd);
    }
    run_compiler(cmd)?;
    Ok(exe)
}

fn c_test_source(name: &str) -> PathBuf {
    crate_dir().join("tests").join("c").join(name)
}

fn example_source() -> PathBuf {
    crate_dir().join("../../examples/c/share_listener.c")
}

fn peer_exe() -> Result<PathBuf, String> {
    static PEER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PEER.get_or_init(|| build_c("peer", &[c_test_source("peer.c")], false))
        .clone()
}

/// Waits for a child, killing it after the deadline so a hang fails instead of blocking.
fn wait(child: &mut Child, what: &str) -> Result<ExitStatus, String> {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_to_end(mut cmd: Command, what: &str) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    let _ = stdout.read_to_string(&mut out);
    let status = wait(&mut child, what)?;
    let err = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed ({status}):\n{out}{err}"))
    }
}

// ---- the header against the Rust definitions ----

fn assertions_program() -> String {
    let mut c = String::from(
        "#include <winsock2.h>\n#include <stddef.h>\n#include <stdint.h>\n\
         #define A(cond) SOCKSHARE_STATIC_ASSERT(cond, #cond);\n",
    );
    for (name, value) in CONSTANTS {
        c += &format!("A((long long)({name}) == ({value}LL))\n");
    }
    for layout in LAYOUTS {
        c += &format!("A(sizeof({}) == {})\n", layout.name, layout.size);
        for (field, offset) in layout.fields {
            c += &format!("A(offsetof({}, {field}) == {offset})\n", layout.name);
        }
    }
    // The types' widths and signedness, as the Rust aliases have them.
    c += "A(sizeof(SOCKET) == sizeof(void *)) A((SOCKET)-1 > 0)\n\
          A(sizeof(WORD) == 2 && (WORD)-1 > 0) A(sizeof(DWORD) == 4 && (DWORD)-1 > 0)\n\
          A(sizeof(WCHAR) == 2 && (WCHAR)-1 > 0) A(sizeof(GROUP) == 4)\n\
          #ifdef UNICODE\nA(sizeof(WSAPROTOCOL_INFO) == 628)\n#else\nA(sizeof(WSAPROTOCOL_INFO) == 372)\n#endif\n\
          A(MAKEWORD(2, 2) == 0x0202 && MAKEWORD(1, 0) == 1 && LOBYTE(0x1234) == 0x34 && HIBYTE(0x1234) == 0x12)\n";
    // The prototypes, against the Rust signatures of src/lib.rs.
    c += "int (*p_startup)(WORD, LPWSADATA) = WSAStartup;\n\
          int (*p_cleanup)(void) = WSACleanup;\n\
          int (*p_get)(void) = WSAGetLastError;\n\
          void (*p_set)(int) = WSASetLastError;\n\
          int (*p_dupa)(SOCKET, DWORD, LPWSAPROTOCOL_INFOA) = WSADuplicateSocketA;\n\
          int (*p_dupw)(SOCKET, DWORD, LPWSAPROTOCOL_INFOW) = WSADuplicateSocketW;\n\
          SOCKET (*p_socka)(int, int, int, LPWSAPROTOCOL_INFOA, GROUP, DWORD) = WSASocketA;\n\
          SOCKET (*p_sockw)(int, int, int, LPWSAPROTOCOL_INFOW, GROUP, DWORD) = WSASocketW;\n\
          int (*p_close)(SOCKET) = closesocket;\n\
          int (*p_ioctl)(SOCKET, long, u_long *) = ioctlsocket;\n\
          int (*p_dup)(SOCKET, DWORD, LPWSAPROTOCOL_INFO) = WSADuplicateSocket;\n\
          SOCKET (*p_sock)(int, int, int, LPWSAPROTOCOL_INFO, GROUP, DWORD) = WSASocket;\n";
    c
}

fn compile_only(path: &Path, cxx: bool, extra: &[&str]) -> TestResult {
    let mut cmd = Command::new(if cxx { "c++" } else { "cc" });
    if cxx {
        cmd.args(["-x", "c++", "-std=c++17"]);
    } else {
        cmd.arg("-std=c11");
    }
    cmd.args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only"])
        .args(extra)
        .arg("-I")
        .arg(include_dir())
        .arg(path);
    run_compiler(cmd)
}

fn header_matches_rust() -> TestResult {
    let path = out_dir().join("assertions.c");
    let program = assertions_program();
    std::fs::write(&path, &program).map_err(|e| e.to_string())?;
    compile_only(&path, false, &[])?;
    compile_only(&path, true, &[])?;
    compile_only(&path, false, &["-DUNICODE"])?;
    compile_only(&path, true, &["-DUNICODE"])?;
    // The check can fail: a wrong value must be caught.
    let broken = program.replace("(10022LL)", "(10023LL)");
    if broken == program {
        return Err("the assertions program has no WSAEINVAL line".into());
    }
    std::fs::write(&path, broken).map_err(|e| e.to_string())?;
    if compile_only(&path, false, &[]).is_ok() {
        return Err("a wrong constant compiled: the assertions check nothing".into());
    }
    Ok(())
}

/// Every object-like macro of the header is a checked constant, or one of a few known
/// others: the header cannot grow a value the Rust side does not know.
fn header_defines_only_known_names() -> TestResult {
    let header =
        std::fs::read_to_string(include_dir().join("winsock2.h")).map_err(|e| e.to_string())?;
    let others = [
        "SOCKSHARE_WINSOCK2_H",
        "WSAAPI",
        "FAR",
        "FIONBIO",
        "FIONREAD",
        "WSADuplicateSocket",
        "WSASocket",
    ];
    let mut unknown = Vec::new();
    let mut defined = 0;
    for line in header.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#define ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with('(') {
            continue; // function-like: MAKEWORD, LOBYTE, HIBYTE, the assert helper
        }
        defined += 1;
        if !others.contains(&name.as_str()) && !CONSTANTS.iter().any(|(n, _)| *n == name) {
            unknown.push(name);
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "constants the Rust side does not define: {unknown:?}"
        ));
    }
    if defined < CONSTANTS.len() {
        return Err(format!(
            "the header defines {defined} names, fewer than the {} constants",
            CONSTANTS.len()
        ));
    }
    Ok(())
}

fn header_compiles_everywhere() -> TestResult {
    let system = "#include <sys/types.h>\n#include <sys/socket.h>\n#include <sys/ioctl.h>\n\
                  #include <netinet/in.h>\n#include <netinet/tcp.h>\n#include <arpa/inet.h>\n\
                  #include <netdb.h>\n#include <unistd.h>\n#include <fcntl.h>\n\
                  #include <poll.h>\n#include <stdint.h>\n#include <stddef.h>\n";
    let body = "int main(void) {\n\
                    WSADATA wsa; WSAPROTOCOL_INFO info; u_long mode = 1;\n\
                    SOCKET s = INVALID_SOCKET;\n\
                    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;\n\
                    s = WSASocket(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO,\n\
                                  &info, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);\n\
                    if (s == INVALID_SOCKET && WSAGetLastError() == WSAEINVAL) return 2;\n\
                    if (ioctlsocket(s, FIONBIO, &mode) == SOCKET_ERROR) return 3;\n\
                    if (WSADuplicateSocket(s, 1, &info) == SOCKET_ERROR) return 4;\n\
                    closesocket(s); WSACleanup(); return (int)FIONREAD;\n}\n";
    let variants = [
        (
            "winsock_first",
            format!("#include <winsock2.h>\n{system}{body}"),
        ),
        (
            "winsock_last",
            format!("{system}#include <winsock2.h>\n{body}"),
        ),
        (
            "winsock_twice",
            format!("#include <winsock2.h>\n{system}#include <winsock2.h>\n{body}"),
        ),
    ];
    for (name, program) in variants {
        let path = out_dir().join(format!("{name}.c"));
        std::fs::write(&path, program).map_err(|e| e.to_string())?;
        for cxx in [false, true] {
            for extra in [&[][..], &["-DUNICODE"][..], &["-D_GNU_SOURCE"][..]] {
                compile_only(&path, cxx, extra)?;
            }
        }
    }
    Ok(())
}

// ---- C programs ----

/// Builds and runs the self-checking C program `tests/c/NAME.c`.
fn c_checks(name: &str) -> TestResult {
    let exe = build_c(name, &[c_test_source(&format!("{name}.c"))], false)?;
    let out = run_to_end(Command::new(&exe), &format!("the C checks of {name}.c"))?;
    if !out.contains("all checks passed") {
        return Err(format!("unexpected output: {out}"));
    }
    Ok(())
}

fn errors_and_check_order() -> TestResult {
    c_checks("errors")
}

fn last_error_after_bsd_calls() -> TestResult {
    c_checks("bsd_errors")
}

/// Runs `fork MODE` (tests/c/fork.c), which fails when a child fails or hangs.
fn fork_children(mode: &str) -> TestResult {
    let exe = build_c("fork", &[c_test_source("fork.c")], false)?;
    let mut cmd = Command::new(&exe);
    cmd.arg(mode);
    let out = run_to_end(cmd, &format!("fork {mode}"))?;
    if !out.contains("children worked") {
        return Err(format!("unexpected output: {out}"));
    }
    Ok(())
}

/// S18: `late_target A|W` (tests/c/late_target.c) shares a listener with a child that
/// calls `WSAStartup` only after it has read the info.
fn late_target() -> TestResult {
    let exe = build_c("late_target", &[c_test_source("late_target.c")], false)?;
    for form in ["A", "W"] {
        let mut cmd = Command::new(&exe);
        cmd.arg(form);
        let out = run_to_end(cmd, &format!("late_target {form}"))?;
        if !out.contains("all checks passed") {
            return Err(format!("late_target {form}: unexpected output: {out}"));
        }
    }
    Ok(())
}

fn fork_with_threads() -> TestResult {
    fork_children("threads")
}

fn fork_without_handlers() -> TestResult {
    fork_children("_Fork")
}

fn check_scenario(exe: &Path) -> TestResult {
    check_scenario_run(Command::new(exe))
}

fn check_scenario_run(cmd: Command) -> TestResult {
    let out = run_to_end(cmd, "share_listener")?;
    if !out.contains("the target answered \"HELLO\"") || !out.contains("source: done") {
        return Err(format!("unexpected output: {out}"));
    }
    Ok(())
}

fn example_scenario() -> TestResult {
    check_scenario(&build_c("share_listener", &[example_source()], false)?)
}

/// Fails when `exe` loads a shared libws2_32.
fn check_static(exe: &Path) -> TestResult {
    let ldd = Command::new("ldd").arg(exe).output();
    if let Ok(out) = ldd {
        if String::from_utf8_lossy(&out.stdout).contains("libws2_32") {
            return Err(format!("{} still loads libws2_32.so", exe.display()));
        }
    }
    Ok(())
}

fn example_scenario_static() -> TestResult {
    let exe = build_c("share_listener_static", &[example_source()], true)?;
    check_static(&exe)?;
    check_scenario(&exe)
}

/// `pkg-config ARGS ws2_32` against the .pc file under `prefix`, split into arguments.
fn pkg_config(prefix: &Path, args: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("ws2_32")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .map_err(|e| format!("running pkg-config (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pkg-config {args:?} ws2_32 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect())
}

/// install.sh puts the header, both libraries and ws2_32.pc under a prefix, and a C
/// program builds with nothing but what pkg-config says: linked to the shared library
/// (run with only the prefix's lib directory to find it), and to the static one with
/// `Libs.private`.
fn install_script_and_pkg_config() -> TestResult {
    let prefix = out_dir().join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    // --from: this build's libraries. Building them again from inside `cargo test` would
    // wait for the lock on the target directory that cargo holds while tests run.
    let mut install = Command::new("bash");
    install
        .arg(crate_dir().join("install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--from")
        .arg(lib_dir());
    run_to_end(install, "install.sh")?;
    for file in [
        "include/winsock2.h",
        "lib/libws2_32.so",
        "lib/libws2_32.a",
        "lib/pkgconfig/ws2_32.pc",
    ] {
        if !prefix.join(file).is_file() {
            return Err(format!("install.sh did not install {file}"));
        }
    }

    let exe = out_dir().join("share_listener_pkg_config");
    let mut cc = Command::new("cc");
    cc.args(C_FLAGS)
        .arg(example_source())
        .arg("-o")
        .arg(&exe)
        .args(pkg_config(&prefix, &["--cflags", "--libs"])?);
    run_compiler(cc)?;
    let mut run = Command::new(&exe);
    run.env("LD_LIBRARY_PATH", prefix.join("lib"));
    check_scenario_run(run)?;

    let exe = out_dir().join("share_listener_pkg_config_static");
    let private: Vec<String> = pkg_config(&prefix, &["--static", "--libs-only-l"])?
        .into_iter()
        .filter(|a| a != "-lws2_32")
        .collect();
    let mut cc = Command::new("cc");
    cc.args(C_FLAGS)
        .arg(example_source())
        .arg("-o")
        .arg(&exe)
        .args(pkg_config(&prefix, &["--cflags"])?)
        .arg(prefix.join("lib/libws2_32.a"))
        .args(private);
    run_compiler(cc)?;
    check_static(&exe)?;
    check_scenario(&exe)
}

/// One hand-off between two processes: the target starts and prints its pid; the source
/// gets it as its last argument and writes the info into a pipe that is the target's
/// stdin; both report the listener's port, which must agree.
fn handoff(mut target: Command, source: Command, what: &str) -> TestResult {
    let mut t = target
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the target: {e}"))?;
    let mut t_out = BufReader::new(t.stdout.take().expect("piped"));
    let mut pid = String::new();
    t_out.read_line(&mut pid).map_err(|e| e.to_string())?;
    let pid = pid.trim().to_string();
    if pid.parse::<u32>().is_err() {
        let _ = t.kill();
        let _ = t.wait();
        return Err(format!("{what}: the target printed {pid:?}, not its pid"));
    }
    let info_pipe = Stdio::from(t.stdin.take().expect("piped"));
    // The Command keeps its copy of the pipe until dropped: drop it at once, so the
    // target sees the end of the info when the source exits.
    let mut s = {
        let mut source = source;
        source
            .arg(&pid)
            .stdout(info_pipe)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the source: {e}"))?
    };
    let mut s_err = String::new();
    let _ = s.stderr.take().expect("piped").read_to_string(&mut s_err);
    let s_status = wait(&mut s, "the source")?;
    let mut t_rest = String::new();
    let _ = t_out.read_to_string(&mut t_rest);
    let t_status = wait(&mut t, "the target")?;
    if !s_status.success() || !t_status.success() {
        return Err(format!(
            "{what}: source {s_status}, target {t_status}\nsource stderr:\n{s_err}\ntarget stdout:\n{t_rest}"
        ));
    }
    let port = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("port "))
            .map(|p| p.trim().to_string())
    };
    match (port(&s_err), port(&t_rest)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (a, b) => Err(format!(
            "{what}: the source's listener is on port {a:?}, the target's socket on {b:?}"
        )),
    }
}

fn c_peer(args: &[&str]) -> Result<Command, String> {
    let mut cmd = Command::new(peer_exe()?);
    cmd.args(args);
    Ok(cmd)
}

fn rust_peer(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.arg("--role").args(args);
    cmd
}

fn c_to_c() -> TestResult {
    // (source's form, target's API): equal forms, and each converted to the other.
    for (form, api) in [("A", "A"), ("W", "W"), ("A", "W"), ("W", "A")] {
        handoff(
            c_peer(&["target", form, api])?,
            c_peer(&["source", form])?,
            &format!("C source {form} -> C target {api}"),
        )?;
    }
    Ok(())
}

fn c_to_rust() -> TestResult {
    for form in ["A", "W"] {
        handoff(
            rust_peer(&["rust-target"]),
            c_peer(&["source", form])?,
            &format!("C source {form} -> Rust target"),
        )?;
    }
    Ok(())
}

fn rust_to_c() -> TestResult {
    for form in ["A", "W"] {
        handoff(
            c_peer(&["target", form, form])?,
            rust_peer(&["rust-source", form]),
            &format!("Rust source {form} -> C target"),
        )?;
    }
    Ok(())
}

// ---- the Rust peer ----

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) - 1
}

fn run_role(args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["rust-target"] => rust_target(),
        ["rust-source", form, pid] => rust_source(form, pid),
        _ => Err(format!("unknown role {args:?}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rust peer: {e}");
            1
        }
    }
}

/// Starts a session, prints its pid, redeems the info (either form) read from stdin,
/// serves one connection through the shared listener, prints its port.
fn rust_target() -> TestResult {
    let fds = count_fds();
    {
        let session = sockshare::Session::new().map_err(|e| e.to_string())?;
        println!("{}", session.pid());
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        let info = sockshare::ProtocolInfo::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let listener = TcpListener::try_from(session.redeem(&info).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut client = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let (mut served, _) = listener.accept().map_err(|e| e.to_string())?;
        client.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut got = [0u8; 4];
        served.read_exact(&mut got).map_err(|e| e.to_string())?;
        if &got != b"ping" {
            return Err(format!("received {got:?}"));
        }
        if session.redeem(&info).is_ok() {
            return Err("the info worked twice".into());
        }
        println!("port {}", addr.port());
    }
    if count_fds() != fds {
        return Err(format!(
            "{} descriptors open at the end, {fds} at the start",
            count_fds()
        ));
    }
    Ok(())
}

/// Shares a fresh listener with `pid`, writes the info in form `form` to stdout and the
/// listener's port to stderr, closes its own descriptor and exits.
fn rust_source(form: &str, pid: &str) -> TestResult {
    let fds = count_fds();
    let pid: u32 = pid.parse().map_err(|_| format!("bad pid {pid}"))?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let info = sockshare::duplicate(&listener, pid).map_err(|e| e.to_string())?;
    let bytes = match form {
        "A" => info.to_bytes_a().to_vec(),
        _ => info.to_bytes_w().to_vec(),
    };
    std::io::stdout()
        .write_all(&bytes)
        .and_then(|()| std::io::stdout().flush())
        .map_err(|e| e.to_string())?;
    eprintln!("port {port}");
    drop(listener);
    sockshare::disconnect_all();
    if count_fds() != fds {
        return Err(format!(
            "{} descriptors open at the end, {fds} at the start",
            count_fds()
        ));
    }
    Ok(())
}
