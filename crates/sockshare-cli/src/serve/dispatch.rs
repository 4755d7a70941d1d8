//! `serve --dispatch`: serve accepts on its stream listeners and hands each connection to
//! one worker of the serving generation with sockshare (the protocol is in
//! `sockshare::dispatch`, the worker's side), in the form the worker's ledger asks for:
//! the descriptor itself with the record (the Rust `Worker`), or an info duplicated for
//! the worker's pid (C workers, with `WSASocketA`).
//!
//! Serve keeps its own descriptor of a connection until the worker's ledger shows it
//! taken, so the connections of a worker that dies first go to another worker
//! ([`Link::orphans`]). The worker never writes to the channel: serve reads the ledgers
//! when it hands out connections, when a worker exits, and every [`SYNC_EVERY`] while
//! it holds connections not yet taken (so a worker that ends connections without
//! `shutdown` does not leave its clients waiting long on serve's descriptor).
//! The choice: the fewest connections handed and not done, round-robin among equals,
//! skipping a worker that has `queue` connections not yet taken (stalled or overloaded)
//! until it catches up; so at most `queue` connections ever wait behind a stalled worker.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use sockshare::dispatch::{Hand, Ledger};

use super::listeners::Listener;
use super::log;

/// Connections serve accepts and holds, at most, before it stops accepting (the rest wait
/// in the kernel's backlog).
const BACKLOG_CAP: usize = 1024;
/// Connections accepted per listener per wake-up, so one busy listener does not starve
/// the rest of the loop.
const ACCEPT_BATCH: usize = 64;

/// How often serve reads the ledgers while it holds connections workers have not taken,
/// when no connection wakes it sooner.
pub const SYNC_EVERY: Duration = Duration::from_millis(5);

/// Serve's end of one worker's channel and ledger, and what the worker holds of serve's.
pub struct Link {
    fd: OwnedFd,
    ledger: Ledger,
    /// The sequence number of the next connection handed: 1 + those handed so far.
    next_seq: u64,
    /// Handed and not yet taken (by the ledger): serve's own descriptor of each.
    pending: VecDeque<(u64, OwnedFd, u32)>,
    /// The ledger's done count at the last `sync`: read once a turn, not once per
    /// connection and worker compared (the page is written by another core).
    done: u64,
    /// Whether the worker asked (in its ledger, as of the last `sync`) for the
    /// connections' descriptors rather than infos to redeem.
    descriptors: bool,
    /// Set once the worker's end is found closed (a send fails) while the worker may
    /// still run: nothing more is handed.
    hung_up: bool,
}

/// The worker's ends of its link, for `workers::spawn` to place.
pub struct WorkerEnds {
    pub channel: OwnedFd,
    pub ledger: OwnedFd,
}

impl Link {
    /// A channel and a ledger: serve's ends, and the worker's (close-on-exec;
    /// `workers::spawn` places them).
    ///
    /// # Errors
    ///
    /// The errors of `socketpair` and of making the ledger.
    pub fn pair() -> io::Result<(Link, WorkerEnds)> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        // The worker checks every record's credentials; asked for on its end before it
        // starts, no record can come without them.
        rustix::net::sockopt::set_socket_passcred(&theirs, true)?;
        let (ledger, ledger_fd) = Ledger::create()?;
        let link = Link {
            fd: ours,
            ledger,
            next_seq: 1,
            pending: VecDeque::new(),
            done: 0,
            descriptors: false,
            hung_up: false,
        };
        Ok((
            link,
            WorkerEnds {
                channel: theirs,
                ledger: ledger_fd,
            },
        ))
    }

    /// Connections handed and not yet done, as of the last `sync`. A worker that wrote
    /// nonsense in its ledger misleads this count, for itself only.
    fn load(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.done)
    }

    /// Reads the ledger: the descriptors of the connections the worker has taken are
    /// closed here (the worker holds them now), and the done count moves on.
    pub fn sync(&mut self) {
        self.done = self.ledger.done();
        self.descriptors = self.ledger.asks_for_descriptors();
        let taken = self.ledger.taken();
        while self
            .pending
            .front()
            .is_some_and(|(seq, _, _)| *seq <= taken)
        {
            self.pending.pop_front();
        }
    }

    /// Whether serve holds connections handed to this worker and not yet taken.
    pub fn holds(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the channel: the worker reads what was handed, then the end, and finishes.
    /// (Only a draining generation's links are ended, and only the serving generation's
    /// workers are handed connections.)
    pub fn close(&self) {
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
    }

    /// The worker is gone: after its last records in the ledger, the connections it never took, for
    /// another worker.
    pub fn orphans(mut self) -> impl Iterator<Item = (OwnedFd, u32)> {
        self.sync();
        self.pending
            .into_iter()
            .map(|(_, fd, listener)| (fd, listener))
    }
}

/// A worker that can take connections: its pid and its link.
pub struct Candidate<'l> {
    pub pid: u32,
    pub link: &'l mut Link,
}

/// The accepting side.
pub struct Dispatcher<'a> {
    listeners: Vec<&'a Listener>,
    /// Accepted and not yet handed to any worker.
    backlog: VecDeque<(OwnedFd, u32)>,
    /// Most connections a worker may hold untaken.
    queue: usize,
    /// Where the round-robin among equally loaded workers starts next.
    cursor: usize,
}

impl<'a> Dispatcher<'a> {
    /// Dispatches the connections of `listeners` (made nonblocking here: serve never waits
    /// in accept).
    ///
    /// # Errors
    ///
    /// The errors of `ioctl(FIONBIO)`.
    pub fn new(listeners: Vec<&'a Listener>, queue: usize) -> io::Result<Dispatcher<'a>> {
        for l in &listeners {
            rustix::io::ioctl_fionbio(&l.fd, true)?;
        }
        Ok(Dispatcher {
            listeners,
            backlog: VecDeque::new(),
            queue,
            cursor: 0,
        })
    }

    /// The listeners to wait on: none while serve's own backlog is full.
    pub fn watch(&self) -> impl Iterator<Item = BorrowedFd<'a>> + '_ {
        let open = self.backlog.len() < BACKLOG_CAP;
        self.listeners
            .iter()
            .filter(move |_| open)
            .map(|l| l.fd.as_fd())
    }

    /// Accepts what is waiting on the listeners in `ready` (raw descriptor numbers).
    pub fn accept(&mut self, ready: &[i32]) {
        for (index, l) in self.listeners.iter().enumerate() {
            if !ready.contains(&l.fd.as_raw_fd()) {
                continue;
            }
            for _ in 0..ACCEPT_BATCH {
                if self.backlog.len() >= BACKLOG_CAP {
                    return;
                }
                match rustix::net::accept_with(&l.fd, SocketFlags::CLOEXEC) {
                    Ok(conn) => self.backlog.push_back((conn, index as u32)),
                    Err(rustix::io::Errno::INTR) => continue,
                    // EAGAIN: all taken; ECONNABORTED and the like: that client is gone;
                    // EMFILE: the backlog waits in the kernel until serve closes some.
                    Err(_) => break,
                }
            }
        }
    }

    /// Whether serve holds connections not yet handed to any worker.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Gives back connections a worker never took, first in line.
    pub fn requeue(&mut self, orphans: impl Iterator<Item = (OwnedFd, u32)>) {
        let orphans: Vec<_> = orphans.collect();
        if !orphans.is_empty() {
            log(format_args!(
                "{} connections the worker never took go to another worker",
                orphans.len()
            ));
        }
        for o in orphans.into_iter().rev() {
            self.backlog.push_front(o);
        }
    }

    /// Hands out the backlog to `workers` (the serving generation's ready ones).
    pub fn hand_out(&mut self, workers: &mut [Candidate<'_>]) {
        let mut refused = vec![false; workers.len()];
        while !self.backlog.is_empty() {
            let Some(at) = self.choose(workers, &refused) else {
                return;
            };
            let Some((conn, listener)) = self.backlog.pop_front() else {
                return;
            };
            let w = &mut workers[at];
            match hand(w, &conn, listener) {
                Ok(seq) => {
                    w.link.pending.push_back((seq, conn, listener));
                    self.cursor = at + 1;
                }
                Err(e) => {
                    // The worker's queue is full or it is going away: another one takes
                    // the connection, this one gets no more in this round.
                    if !matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                        log(format_args!(
                            "cannot hand a connection to worker {}: {e}",
                            w.pid
                        ));
                    }
                    // Its end is closed: the worker may run on, but takes nothing more.
                    w.link.hung_up |= e.raw_os_error() == Some(libc::EPIPE);
                    refused[at] = true;
                    self.backlog.push_front((conn, listener));
                }
            }
        }
    }

    /// The least loaded worker that may take one more, round-robin among equals.
    fn choose(&self, workers: &[Candidate<'_>], refused: &[bool]) -> Option<usize> {
        let n = workers.len();
        (0..n)
            .map(|i| (self.cursor + i) % n.max(1))
            .filter(|&i| {
                let link = &workers[i].link;
                !refused[i] && !link.hung_up && link.pending.len() < self.queue
            })
            .min_by_key(|&i| workers[i].link.load())
    }

    /// Closes what serve still holds (at stop): those clients see the connection end.
    pub fn drop_backlog(&mut self) {
        if !self.backlog.is_empty() {
            log(format_args!(
                "closing {} connections no worker took",
                self.backlog.len()
            ));
        }
        self.backlog.clear();
    }
}

/// Hands `conn` to the worker, in the form its ledger asks for: the descriptor with the
/// record, or the record with an info duplicated for the worker's pid. The sequence
/// number used.
fn hand(w: &mut Candidate<'_>, conn: &OwnedFd, listener: u32) -> io::Result<u64> {
    let hand = Hand {
        seq: w.link.next_seq,
        listener,
    };
    if w.link.descriptors {
        hand.send_descriptor(w.link.fd.as_fd(), conn.as_fd())?;
    } else {
        let info = sockshare::duplicate(conn, w.pid).map_err(io::Error::from)?;
        // The duplicate sits in the worker's session; if the record cannot follow it, the
        // worker never learns of it and that copy lives until the worker exits (logged).
        hand.send_info(w.link.fd.as_fd(), &info.to_bytes_a())?;
    }
    w.link.next_seq += 1;
    Ok(hand.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn seqs(link: &Link) -> Vec<u64> {
        link.pending.iter().map(|(seq, _, _)| *seq).collect()
    }

    /// Serve drops its descriptors of the connections the ledger shows taken, and only
    /// those; the load follows `done`; a worker's death gives back the rest.
    #[test]
    fn the_ledger_releases_what_was_taken_and_counts_the_load() {
        let (mut link, ends) = Link::pair().expect("a link");
        let worker = Ledger::map(&ends.ledger).expect("the worker's mapping");
        for seq in 1..=3 {
            let placeholder = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
            link.pending.push_back((seq, placeholder, 0));
        }
        link.next_seq = 4;
        link.sync();
        assert_eq!(seqs(&link), [1, 2, 3], "nothing taken yet");
        worker.set_taken(2);
        link.sync();
        assert_eq!(seqs(&link), [3]);
        assert_eq!(link.load(), 3);
        worker.add_done();
        worker.add_done();
        assert_eq!(link.load(), 3, "counted at the next sync");
        link.sync();
        assert_eq!(link.load(), 1);
        assert_eq!(link.orphans().map(|(_, l)| l).collect::<Vec<_>>(), [0]);
    }

    /// A worker that closes its end of the channel and goes on running: the first hand
    /// to it fails, the connection goes to another worker, and it is not chosen again.
    #[test]
    fn a_worker_end_closed_is_found_on_the_first_hand_and_not_chosen_again() {
        let _session = sockshare::Session::new().expect("this process's session");
        let (mut gone, ends) = Link::pair().expect("a link");
        drop(ends);
        let (mut open, _kept) = Link::pair().expect("a link");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut dispatcher = Dispatcher::new(Vec::new(), 4).expect("a dispatcher");
        dispatcher.backlog.push_back((OwnedFd::from(conn), 0));
        let me = std::process::id();
        let mut workers = [
            Candidate {
                pid: me,
                link: &mut gone,
            },
            Candidate {
                pid: me,
                link: &mut open,
            },
        ];
        dispatcher.hand_out(&mut workers);
        assert!(!dispatcher.has_backlog(), "the connection was handed");
        assert_eq!(dispatcher.choose(&workers, &[false, false]), Some(1));
        assert!(workers[0].link.hung_up);
        assert_eq!(seqs(workers[1].link), [1]);
    }

    /// Serve sends a worker infos to redeem until its ledger asks for descriptors (a C
    /// worker never does), then the descriptors themselves.
    #[test]
    fn a_worker_gets_the_form_its_ledger_asks_for() {
        use sockshare::dispatch::{HAND_SIZE, HEADER_SIZE};
        let _session = sockshare::Session::new().expect("this process's session");
        let (mut link, ends) = Link::pair().expect("a link");
        let worker = Ledger::map(&ends.ledger).expect("the worker's mapping");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let conn = OwnedFd::from(conn);
        let hand_one = |link: &mut Link| {
            let mut candidate = Candidate {
                pid: std::process::id(),
                link,
            };
            hand(&mut candidate, &conn, 0).expect("handed");
            let mut bytes = [0u8; HAND_SIZE + 1];
            let mut space = [std::mem::MaybeUninit::uninit();
                rustix::cmsg_space!(ScmRights(1), ScmCredentials(1))];
            let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &ends.channel,
                &mut [std::io::IoSliceMut::new(&mut bytes)],
                &mut control,
                rustix::net::RecvFlags::empty(),
            )
            .expect("a record");
            let fds = control
                .drain()
                .filter_map(|m| match m {
                    rustix::net::RecvAncillaryMessage::ScmRights(fds) => Some(fds.count()),
                    _ => None,
                })
                .sum::<usize>();
            (msg.bytes, fds)
        };
        link.sync();
        assert_eq!(hand_one(&mut link), (HAND_SIZE, 0), "an info record");
        worker.ask_for_descriptors();
        link.sync();
        assert_eq!(hand_one(&mut link), (HEADER_SIZE, 1), "a descriptor record");
        assert_eq!(link.next_seq, 3, "numbered in turn, whatever the form");
    }
}
