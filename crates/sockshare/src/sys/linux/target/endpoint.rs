//! The session's endpoint: binding its name, admitting sources (the `door`), connecting
//! to keepers, and the thread that serves it.

use super::*;

impl Endpoint {
    pub(super) fn bind(pid: u32, options: SessionOptions) -> Result<Endpoint> {
        let not_ready = |what: &str, e: Errno| {
            let mut err = os_error(what, e);
            if err.kind() == ErrorKind::NetDown {
                err = Error::new(ErrorKind::SystemNotReady, err.message().to_owned())
                    .with_source(e.into());
            }
            err
        };
        let start = start_time(None).map_err(|e| {
            Error::new(
                ErrorKind::SystemNotReady,
                "cannot read this process's start time in /proc/self/stat, which names \
                 the session (is /proc mounted?)",
            )
            .with_source(e)
        })?;
        let listener =
            seqpacket_socket().map_err(|e| not_ready("creating the session endpoint", e))?;
        // The first free indexed name; where squatters hold them all, a random one, which
        // sources find from this process's descriptors (`discover_endpoint`).
        let mut random = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
        let last = format!("r{:016x}", u64::from_le_bytes(random));
        let suffixes = (0..ENDPOINT_NAMES).map(|i| i.to_string()).chain([last]);
        let mut bound = Err(Errno::ADDRINUSE);
        for suffix in suffixes {
            let addr = endpoint_address(pid, start, &suffix)
                .map_err(|e| os_error("naming the session", e))?;
            bound = rustix::net::bind(&listener, &addr);
            if bound != Err(Errno::ADDRINUSE) {
                break;
            }
        }
        bound.map_err(|e| {
            if e == Errno::ADDRINUSE {
                Error::new(
                    ErrorKind::SystemNotReady,
                    format!(
                        "other processes hold every session name of this process \
                         (sockshare/v2/{pid}.{start}.*, in this network namespace)"
                    ),
                )
                .with_source(e.into())
            } else {
                not_ready("binding the session endpoint", e)
            }
        })?;
        rustix::net::listen(&listener, 128)
            .map_err(|e| not_ready("listening on the session endpoint", e))?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| not_ready("creating the session's epoll", e))?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| not_ready("creating the session's eventfd", e))?;
        let edge = epoll::EventFlags::IN | epoll::EventFlags::ET;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER_KEY),
            edge,
        )
        .and_then(|()| epoll::add(&epoll, &wake, epoll::EventData::new_u64(WAKE_KEY), edge))
        .map_err(|e| not_ready("watching the session endpoint", e))?;
        let reserve = rustix::io::fcntl_dupfd_cloexec(&wake, 0).ok();
        let capacity = options.capacity.unwrap_or_else(default_capacity);
        Ok(Endpoint {
            pid,
            start,
            options,
            unmapped_uid: unmapped_uid(),
            epoll,
            wake,
            stopping: AtomicBool::new(false),
            door: Mutex::new(Door {
                listener: Some(listener),
                reserve,
                out_of_fds: false,
            }),
            inner: Mutex::new(Inner {
                closed: false,
                conns: Vec::new(),
                live_conns: 0,
                pending: Table::new(),
                capacity,
                out_of_fds: false,
                last_redeem: None,
                batch: Batch::new(batch::MAX_RECORDS, wire::MAX_PUSH_LEN, wire::MAX_FDS, false),
                seek: None,
                turn: 0,
                seen: HashMap::new(),
            }),
        })
    }

    /// Whether the thread must retry on a timer: descriptors ran out, so no event will
    /// say when accepting or receiving (or taking back the spare) can succeed.
    pub(super) fn starved(&self) -> bool {
        let door = lock(&self.door);
        let door_starved = door.out_of_fds || (door.reserve.is_none() && door.listener.is_some());
        drop(door);
        door_starved || lock(&self.inner).out_of_fds
    }

    /// Accepts every waiting connection and answers it. Only admitted connections take
    /// `inner`, briefly.
    pub(super) fn accept_all(&self) {
        loop {
            let mut door = lock(&self.door);
            let Some(listener) = &door.listener else {
                return;
            };
            let conn = match rustix::net::accept_with(
                listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(conn) => conn,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(Errno::MFILE | Errno::NFILE) if door.reserve.is_some() => {
                    door.reserve = None;
                    continue;
                }
                Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                    door.out_of_fds = true;
                    return;
                }
                Err(_) => return,
            };
            door.out_of_fds = false;
            drop(door);
            self.admit(conn);
        }
    }

    /// The session's verdict on a source: its policy, on the kernel's credentials.
    pub(super) fn verdict(&self, conn: BorrowedFd<'_>) -> Verdict {
        let target_uid = rustix::process::geteuid().as_raw();
        let admitted = peer_cred(conn).is_ok_and(|cred| {
            // A uid the kernel could not map into this namespace is nobody's (S23).
            let unmapped = Some(cred.uid) == self.unmapped_uid;
            (!unmapped || self.options.policy == Policy::AnyUser)
                && self.options.policy.allows(cred.uid, target_uid)
        });
        if !admitted {
            return Verdict::Refused;
        }
        // A stale count moves the limit by a connection at most; refused sources, above,
        // never take the lock.
        let live_conns = lock(&self.inner).live_conns;
        // Receiving peeks a batch at a time, stepping with SO_PEEK_OFF.
        if live_conns >= connection_limit() || batch::set_peek_off(conn, 0).is_err() {
            Verdict::Busy
        } else {
            Verdict::Accepted
        }
    }

    pub(super) fn admit(&self, conn: OwnedFd) {
        let verdict = self.verdict(conn.as_fd());
        let answer = |conn: BorrowedFd<'_>| {
            rustix::net::send(
                conn,
                &wire::reply(verdict),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
            .is_ok()
        };
        if verdict != Verdict::Accepted {
            answer(conn.as_fd());
            return; // dropping `conn` closes it and anything it sent
        }
        // Answered only once the connection is in the table's list: the source pushes as
        // soon as it reads the answer, and a redeem of what it pushed must find it there.
        self.add_conn(conn, false, answer);
    }

    /// Adds a connection whose records the session drains, once `ready` (given the
    /// connection, with `inner` locked) says yes.
    pub(super) fn add_conn(
        &self,
        conn: OwnedFd,
        from_keeper: bool,
        ready: impl FnOnce(BorrowedFd<'_>) -> bool,
    ) {
        let mut inner = lock(&self.inner);
        let slot = match inner.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                inner.conns.push(None);
                inner.conns.len() - 1
            }
        };
        let watched = epoll::add(
            &self.epoll,
            &conn,
            epoll::EventData::new_u64(CONN_BASE + slot as u64),
            CONN_EVENTS,
        );
        if watched.is_err() || !ready(conn.as_fd()) {
            return;
        }
        inner.conns[slot] = Some(Conn {
            fd: conn,
            from_keeper,
            tombstones: Vec::new(),
        });
        inner.live_conns += 1;
        // Data may have arrived before the watch began: edge-triggered epoll would not
        // report it.
        inner.drain_rounds(1, |_| slot, None);
    }

    /// Watches the connections for records again (`on`: re-watching reports those with
    /// records already queued), or stops watching them, while redeems drain them.
    fn watch_conns(&self, inner: &Inner, on: bool) {
        let events = if on {
            CONN_EVENTS
        } else {
            epoll::EventFlags::ET
        };
        for (slot, conn) in inner.conns.iter().enumerate() {
            if let Some(conn) = conn {
                // Fails only for want of kernel memory: the connection's records are then
                // drained by redeems, and on the next change of watch.
                let _ = epoll::modify(
                    &self.epoll,
                    &conn.fd,
                    epoll::EventData::new_u64(CONN_BASE + slot as u64),
                    events,
                );
            }
        }
    }

    /// Connects to every keeper holding sockets for this process (see `keeper`) whose
    /// user the policy admits; the keepers then forward them on these connections.
    /// Returns whether there was any.
    pub(super) fn pull_keepers(&self) -> bool {
        let mut any = false;
        for index in 0..KEEPER_NAMES {
            let Ok(addr) = keeper_address(self.pid, self.start, index) else {
                continue;
            };
            let Ok(conn) = seqpacket_socket() else {
                return any;
            };
            if rustix::net::connect(&conn, &addr).is_err() {
                continue;
            }
            // The keeper is a source like any other: the policy decides on its user (first,
            // so a listener of a user it refuses costs no wait); and it answers only the
            // process it keeps sockets for (see `keeper`).
            if self.verdict(conn.as_fd()) != Verdict::Accepted {
                continue;
            }
            let mut answer = [0u8; wire::HEADER_LEN + 1];
            let answered = matches!(
                super::super::recv_with_sender(conn.as_fd(), &mut answer, KEEPER_ANSWER),
                Ok(Some((n, _))) if wire::parse_reply(&answer[..n]) == Some(Verdict::Accepted)
            );
            if answered {
                self.add_conn(conn, true, |_| true);
                any = true;
            }
        }
        any
    }

    /// Takes the spare descriptor back once receiving no longer lacks descriptors:
    /// pending sockets come first, the spare only from what they leave.
    pub(super) fn retake_reserve(&self) {
        let mut door = lock(&self.door);
        if door.reserve.is_none() {
            door.reserve = door
                .listener
                .as_ref()
                .and_then(|l| rustix::io::fcntl_dupfd_cloexec(l, 0).ok());
        }
    }
}

/// The session's thread: admits sources and drains their pushes into the table.
///
/// While the process redeems, its redeems drain inline on a miss: the thread stays out of
/// their way (it would take a core and the table's lock from them) and stops watching the
/// connections, so that a push costs no wake-up of the thread. It looks every `QUIET`,
/// and watches them again once no redeem has run for `ACTIVE`. Otherwise it drains, then
/// lets the next pushes gather a while: every push is a new edge of epoll, and waking for
/// each would cost a wake-up and a turn at the lock per push.
pub(super) fn serve(ep: &Endpoint) {
    let mut events = Vec::with_capacity(64);
    // Connections with data this thread has not drained yet.
    let mut ready: Vec<usize> = Vec::with_capacity(64);
    // The connections are not watched: redeems drain them.
    let mut quiet = false;
    loop {
        let starved = ep.starved();
        let timeout = if starved {
            Some(RETRY)
        } else if quiet {
            Some(QUIET)
        } else if !ready.is_empty() {
            Some(ACTIVE)
        } else {
            None
        };
        let timeout = timeout.map(|t| rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: t.as_nanos() as _,
        });
        events.clear();
        match epoll::wait(
            &ep.epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            // epoll_wait fails only on a bad descriptor or buffer, which this thread owns;
            // if it ever did, redeems still drain inline, and the thread keeps trying
            // rather than leave sources unanswered.
            Err(_) => std::thread::sleep(RETRY),
        }
        if ep.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut accept = starved;
        for ev in &events {
            match ev.data.u64() {
                LISTENER_KEY => accept = true,
                WAKE_KEY => {}
                key => {
                    let slot = (key - CONN_BASE) as usize;
                    if !ready.contains(&slot) {
                        ready.push(slot);
                    }
                }
            }
        }
        if accept {
            ep.accept_all();
        }
        let mut inner = lock(&ep.inner);
        let redeeming = inner.redeemed_recently();
        if quiet && !redeeming {
            ep.watch_conns(&inner, true);
            quiet = false;
        }
        let deferred = !ready.is_empty() && redeeming;
        let drain = !ready.is_empty() && !deferred;
        if starved {
            inner.drain_all(None);
        } else if drain {
            inner.drain_rounds(ready.len(), |k| ready[k], None);
        }
        if deferred {
            // Connections added since (new sources, keepers) are watched: stop them too.
            ep.watch_conns(&inner, false);
            quiet = true;
        }
        let retake = starved && !inner.out_of_fds;
        drop(inner);
        if retake {
            ep.retake_reserve();
        }
        if starved || drain || deferred {
            ready.clear();
        }
        if drain {
            std::thread::sleep(COALESCE);
        }
    }
}
