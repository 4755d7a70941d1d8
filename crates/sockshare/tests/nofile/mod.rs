//! For tests that run a process out of descriptors (in a child of their own:
//! `RLIMIT_NOFILE` is per process).

use std::fs::File;

/// Lowers this process's soft descriptor limit to `limit` and opens files until no
/// descriptor is left. Closing one of them frees exactly one.
pub fn fill_descriptor_table(limit: u64) -> Vec<File> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut fillers = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        fillers.push(f);
    }
    fillers
}
