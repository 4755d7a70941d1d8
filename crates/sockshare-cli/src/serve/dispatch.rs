//! `serve --dispatch`: serve accepts on its stream listeners and hands each connection to
//! one worker of the serving generation with sockshare (the protocol is in
//! `sockshare::dispatch`, the worker's side).
//!
//! Serve keeps its own descriptor of a connection until the worker reports it taken, so
//! the connections of a worker that dies first go to another worker ([`Link::orphans`]).
//! The choice: the fewest connections handed and not done, round-robin among equals,
//! skipping a worker that has `queue` connections not yet taken (stalled or overloaded)
//! until it catches up; so at most `queue` connections ever wait behind a stalled worker.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use sockshare::dispatch::{Hand, Report, HAND_SIZE, REPORT_SIZE};

use super::listeners::Listener;
use super::log;

/// Connections serve accepts and holds, at most, before it stops accepting (the rest wait
/// in the kernel's backlog).
const BACKLOG_CAP: usize = 1024;
/// Connections accepted per listener per wake-up, so one busy listener does not starve
/// the rest of the loop.
const ACCEPT_BATCH: usize = 64;

/// Serve's end of one worker's channel, and what the worker holds of serve's.
pub struct Link {
    fd: OwnedFd,
    /// The sequence number of the next connection handed: 1 + those handed so far.
    next_seq: u64,
    /// Handed and not yet reported taken: serve's own descriptor of each.
    pending: VecDeque<(u64, OwnedFd, u32)>,
    done: u64,
    /// Set once serve has ended the channel: nothing more is handed.
    closed: bool,
    /// Set once the worker's end is closed (a read of 0 bytes) while the worker may still
    /// run: nothing more is handed, nor read.
    hung_up: bool,
}

impl Link {
    /// A channel: serve's end, and the worker's (close-on-exec; `workers::spawn` places it).
    ///
    /// # Errors
    ///
    /// The errors of `socketpair`.
    pub fn pair() -> io::Result<(Link, OwnedFd)> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        let link = Link {
            fd: ours,
            next_seq: 1,
            pending: VecDeque::new(),
            done: 0,
            closed: false,
            hung_up: false,
        };
        Ok((link, theirs))
    }

    /// Connections handed and not yet done.
    fn load(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.done)
    }

    /// Reads the worker's reports: a taken connection's descriptor is closed here (the
    /// worker holds it now), and the done count moves on.
    pub fn read_reports(&mut self) {
        let mut bytes = [0u8; REPORT_SIZE + 1];
        loop {
            let n = match rustix::net::recv(&self.fd, &mut bytes, RecvFlags::DONTWAIT) {
                Ok((n, _)) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            };
            if n == 0 {
                // The worker closed its end (or sent an empty record, which no worker
                // does). The channel now polls readable for good: watching it would spin
                // serve's loop until the worker is reaped.
                self.hung_up = true;
                return;
            }
            // A damaged report is the worker's loss: it is ignored, as any stranger's.
            let Some(report) = Report::from_bytes(&bytes[..n]) else {
                continue;
            };
            if report.taken != 0 {
                if let Some(at) = self
                    .pending
                    .iter()
                    .position(|(seq, _, _)| *seq == report.taken)
                {
                    self.pending.remove(at);
                }
            }
            self.done = self.done.max(report.done);
        }
    }

    /// Whether the loop should wait for reports on it: not once the worker's end is
    /// closed (the reports it sent before are read, the connections it never took come
    /// back when it is reaped).
    pub fn watched(&self) -> bool {
        !self.hung_up
    }

    /// Ends the channel: the worker reads what was handed, then the end, and finishes.
    pub fn close(&mut self) {
        self.closed = true;
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
    }

    /// The worker is gone: after its last reports, the connections it never took, for
    /// another worker.
    pub fn orphans(mut self) -> impl Iterator<Item = (OwnedFd, u32)> {
        self.read_reports();
        self.pending
            .into_iter()
            .map(|(_, fd, listener)| (fd, listener))
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        log(format_args!(
                            "cannot hand a connection to worker {}: {e}",
                            w.pid
                        ));
                    }
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
                !refused[i] && !link.closed && !link.hung_up && link.pending.len() < self.queue
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

/// Duplicates `conn` for the worker and sends it the record; the sequence number used.
fn hand(w: &mut Candidate<'_>, conn: &OwnedFd, listener: u32) -> io::Result<u64> {
    let info = sockshare::duplicate(conn, w.pid).map_err(io::Error::from)?;
    let seq = w.link.next_seq;
    let record = Hand {
        seq,
        listener,
        info: info.to_bytes_a(),
    }
    .to_bytes();
    debug_assert_eq!(record.len(), HAND_SIZE);
    // The duplicate sits in the worker's session; if the record cannot follow it, the
    // worker never learns of it and that copy lives until the worker exits (logged).
    rustix::net::send(
        &w.link.fd,
        &record,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    w.link.next_seq += 1;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that closes its end of the channel and goes on running: serve reads its
    /// last reports, then neither waits on the channel (it would poll readable for good
    /// and spin serve's loop) nor hands it anything.
    #[test]
    fn a_worker_end_closed_is_neither_watched_nor_chosen() {
        let (mut gone, theirs) = Link::pair().expect("a channel");
        let (mut open, _kept) = Link::pair().expect("a channel");
        let report = Report { taken: 0, done: 3 }.to_bytes();
        rustix::net::send(&theirs, &report, SendFlags::empty()).expect("a report");
        drop(theirs);
        gone.read_reports();
        assert_eq!(gone.done, 3, "the report sent before the end is read");
        assert!(!gone.watched());
        open.read_reports();
        assert!(open.watched(), "an open channel with nothing to read");

        let dispatcher = Dispatcher::new(Vec::new(), 4).expect("a dispatcher");
        let mut workers = [
            Candidate {
                pid: 1,
                link: &mut gone,
            },
            Candidate {
                pid: 2,
                link: &mut open,
            },
        ];
        assert_eq!(dispatcher.choose(&workers, &[false, false]), Some(1));
        workers.swap(0, 1);
        assert_eq!(dispatcher.choose(&workers[1..], &[false]), None);
    }
}
