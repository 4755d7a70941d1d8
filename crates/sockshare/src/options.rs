//! The settings of a session, shared by the portable API and the backends: which
//! sources a session admits ([`Policy`]) and how many sockets it holds
//! ([`DEFAULT_CAPACITY`]). A leaf: it imports nothing of the crate but its errors.

use crate::error::{Error, ErrorKind, Result};

/// Which processes may push sockets to a session.
///
/// The default, [`Policy::SameUser`], is Windows' rule for `PROCESS_DUP_HANDLE`: a source
/// running as the target's user, or as root. A refused source gets
/// [`ErrorKind::Invalid`](ErrorKind::Invalid) from [`duplicate`](crate::duplicate); anything it sent
/// is closed.
///
/// On Windows the operating system decides instead: `WSADuplicateSocketW` opens the target
/// with `PROCESS_DUP_HANDLE`, which the target's security descriptor grants or refuses
/// (`WSAEINVAL`); a session's policy cannot widen that and is not consulted.
///
/// ```
/// use sockshare::Policy;
/// assert!(Policy::SameUser.allows(1000, 1000));
/// assert!(Policy::SameUser.allows(0, 1000)); // root
/// assert!(!Policy::SameUser.allows(1001, 1000));
/// assert!(Policy::AllowUids(vec![1001]).allows(1001, 1000));
/// assert!(Policy::AnyUser.allows(65534, 1000));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// Sources running as the target's effective uid, or as root.
    #[default]
    SameUser,
    /// As `SameUser`, and also sources running as any of these uids.
    AllowUids(Vec<u32>),
    /// Any local process that can reach the session.
    AnyUser,
}

impl Policy {
    /// Whether a source running as `source_uid` may push to a target running as
    /// `target_uid`.
    #[must_use]
    pub fn allows(&self, source_uid: u32, target_uid: u32) -> bool {
        let same = source_uid == target_uid || source_uid == 0;
        match self {
            Policy::SameUser => same,
            Policy::AllowUids(uids) => same || uids.contains(&source_uid),
            Policy::AnyUser => true,
        }
    }
}

/// The resolved settings of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionOptions {
    pub(crate) policy: Policy,
    /// `None`: the default, which the backend sizes when the session starts.
    pub(crate) capacity: Option<usize>,
}

/// How many unredeemed sockets a session holds by default before sources get
/// `WSAENOBUFS`. Each holds one descriptor of the target process, so on Linux the default
/// is also at most half the soft `RLIMIT_NOFILE` at the time the session starts: pending
/// sockets then never take the descriptors the process needs to redeem them.
pub const DEFAULT_CAPACITY: usize = 4096;

impl SessionOptions {
    /// Checks that a session with these settings may be joined by a request for
    /// `requested` ones (`None`: whatever runs).
    pub(crate) fn check_join(&self, requested: Option<&SessionOptions>) -> Result<()> {
        if requested.is_some_and(|o| o != self) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a session with other options is already active in this process: \
                 join it with Session::new() or end it first",
            ));
        }
        Ok(())
    }
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            policy: Policy::SameUser,
            capacity: None,
        }
    }
}
