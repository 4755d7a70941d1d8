//! What the tests that speak to a session endpoint by hand share.

/// The first name of this process's session endpoint (`sockshare/v2/<pid>.<start>.0`,
/// the start time being field 22 of /proc/self/stat), which a session binds when no other
/// process holds it; written out here so the tests check the library against the
/// protocol, not against itself.
pub fn endpoint_name(pid: u32) -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap();
    format!("sockshare/v2/{pid}.{start}.0")
}
