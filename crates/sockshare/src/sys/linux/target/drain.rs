//! Moving pushed sockets from the connections' queues into the table (draining, in
//! round-robin turns), and finding one socket that waits behind a full table (seeking).

use super::*;

impl Inner {
    pub(super) fn take(&mut self, token: u64, kind: u32) -> Result<Option<OwnedFd>> {
        self.pending.take(token, kind).map_err(|Altered| altered())
    }

    /// A socket not in the table yet: drains the connections until its token arrives, then
    /// takes it, or seeks it behind a full table.
    pub(super) fn find_queued(&mut self, token: u64, kind: u32) -> Result<Option<OwnedFd>> {
        self.drain_all(Some(token));
        match self.take(token, kind)? {
            Some(fd) => Ok(Some(fd)),
            None => self.seek(token, kind),
        }
    }

    /// Drains every connection, up to capacity; for a redeem (`until`), stops once that
    /// token has arrived.
    pub(super) fn drain_all(&mut self, until: Option<u64>) {
        self.out_of_fds = false;
        let n = self.conns.len();
        self.drain_rounds(n, |k| k, until);
    }

    /// Drains the `count` connections `slot_at(0..count)` names, a batch from each in
    /// turn, until none has more, the table is full, descriptors run out, or `until` has
    /// arrived; returns whether it did. Turns, and a first turn that moves on each call,
    /// share the table among sources, so the socket a target will ask for next (the
    /// oldest of each source, for a program that takes them in order) is in the table
    /// rather than behind others in a queue, where only a seek finds it.
    pub(super) fn drain_rounds(
        &mut self,
        count: usize,
        slot_at: impl Fn(usize) -> usize,
        until: Option<u64>,
    ) -> bool {
        if count == 0 {
            return false;
        }
        let first = self.turn % count;
        self.turn = self.turn.wrapping_add(1);
        loop {
            let mut more = false;
            for k in 0..count {
                match self.drain(slot_at((first + k) % count), until) {
                    Visit::Found => return true,
                    Visit::More => more = true,
                    Visit::Idle => {}
                }
                if self.out_of_fds {
                    return false;
                }
            }
            if !more {
                return false;
            }
        }
    }

    /// Whether this process redeemed within the last `ACTIVE`.
    pub(super) fn redeemed_recently(&self) -> bool {
        self.last_redeem.is_some_and(|t| t.elapsed() < ACTIVE)
    }

    /// Moves one batch of the records queued on connection `slot` into the table, up to
    /// what fits in the capacity (the rest waits in the queue), and says what it found.
    pub(super) fn drain(&mut self, slot: usize, until: Option<u64>) -> Visit {
        // Out of its slot while draining, so the table can be filled meanwhile.
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return Visit::Idle;
        };
        let (keep, visit) = self.drain_conn(&mut conn, until);
        if keep {
            self.conns[slot] = Some(conn);
        } else {
            self.live_conns -= 1; // dropping `conn` closes it and whatever it still queues
        }
        visit
    }

    /// `drain` on one connection: returns whether to keep the connection, and what the
    /// batch found.
    pub(super) fn drain_conn(&mut self, conn: &mut Conn, until: Option<u64>) -> (bool, Visit) {
        let mut found = false;
        {
            // A full table peeks nothing (the copies would only be closed again), unless
            // records a redeem took sockets from wait at the head: taking those adds
            // nothing to the table, and frees the source's queue.
            if self.pending.len() >= self.capacity && conn.tombstones.is_empty() {
                return (true, Visit::Idle);
            }
            let records = match self.batch.peek(conn.fd.as_fd(), false) {
                Ok(records) if records.is_empty() => return (true, Visit::Idle),
                Ok(records) => records,
                Err(_) => return (false, Visit::Idle),
            };
            let peeked = records.len();
            let (mut taken, mut full) = (0, false);
            for (i, meta) in records.into_iter().enumerate() {
                // A record longer than any push was peeked in part, and the peek offset
                // moved past that part only: what the batch peeked after it is the rest
                // of the same record. So the batch ends there; first in it, the record is
                // dropped whole (a consume takes a record whole).
                if meta.len > wire::MAX_PUSH_LEN {
                    taken += usize::from(i == 0);
                    break;
                }
                let record = match push_record(self.batch.record(&meta), meta) {
                    Record::Sockets(sockets) => sockets,
                    // A record that breaks the protocol is dropped (its descriptors close
                    // with it); the source's records after it are still its own.
                    Record::Broken => {
                        taken += 1;
                        continue;
                    }
                    // Copies of the records after it close with the iterator; they stay
                    // queued and the next peek starts over at this one.
                    Record::NoRoom => {
                        self.out_of_fds |= i == 0;
                        break;
                    }
                };
                let arriving = record
                    .iter()
                    .filter(|(token, _, _)| !conn.tombstones.contains(token))
                    .count();
                if self.pending.len() + arriving > self.capacity {
                    full = true;
                    break;
                }
                found |= self.insert(conn, record, until);
                taken += 1;
            }
            if batch::consume(conn.fd.as_fd(), taken, peeked).is_err() {
                return (false, if found { Visit::Found } else { Visit::Idle });
            }
            let visit = if found {
                Visit::Found
            } else if self.out_of_fds || full {
                Visit::Idle
            } else {
                Visit::More
            };
            (true, visit)
        }
    }

    /// Puts received sockets in the table (or closes those a redeem took already);
    /// returns whether `until` was among them.
    pub(super) fn insert(
        &mut self,
        conn: &mut Conn,
        sockets: Vec<Pushed>,
        until: Option<u64>,
    ) -> bool {
        let mut found = false;
        for (token, kind, fd) in sockets {
            if let Some(i) = conn.tombstones.iter().position(|&t| t == token) {
                conn.tombstones.swap_remove(i);
                continue; // `fd` closes: the redeem holds its own copy
            }
            found |= Some(token) == until;
            if !self.seen.is_empty() {
                self.seen.remove(&token);
            }
            // A socket whose token is live already is closed here (see `Table::insert`).
            drop(self.pending.insert(token, kind, fd));
        }
        found
    }

    /// Looks for `token` in the connections' queues without consuming anything, and
    /// takes a copy of its socket (see the module docs).
    pub(super) fn seek(&mut self, token: u64, kind: u32) -> Result<Option<OwnedFd>> {
        if self
            .conns
            .iter()
            .flatten()
            .any(|c| c.tombstones.contains(&token))
        {
            return Ok(None); // taken already by an earlier seek
        }
        let batch = self.seek.get_or_insert_with(|| {
            Batch::new(SEEK_RECORDS, wire::MAX_PUSH_LEN, wire::MAX_FDS, false)
        });
        if self.seen.len() > SEEN_MAX {
            self.seen.clear();
        }
        // Where an earlier seek saw the token first, then every connection.
        let hint = self.seen.get(&token).copied();
        let slots = hint
            .into_iter()
            .chain((0..self.conns.len()).filter(|&slot| Some(slot) != hint));
        for slot in slots {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let found = seek_conn(batch, conn.fd.as_fd(), (token, kind), slot, &mut self.seen);
            // Back to the head, where the drains expect the peek offset.
            let _ = batch::set_peek_off(conn.fd.as_fd(), 0);
            match found {
                Sought::Found(fd) => {
                    self.seen.remove(&token);
                    conn.tombstones.push(token);
                    return Ok(Some(fd));
                }
                Sought::Altered => return Err(altered()),
                Sought::NoRoom => self.out_of_fds = true,
                Sought::NotHere => {}
            }
        }
        Ok(None)
    }
}

/// What a batch from one connection's queue found.
pub(super) enum Visit {
    /// The token a redeem looks for arrived.
    Found,
    /// A batch was taken; more may be queued.
    More,
    /// Nothing more to take now: the queue is empty or dropped, the table is full, or
    /// descriptors ran out.
    Idle,
}

pub(super) fn altered() -> Error {
    Error::new(
        ErrorKind::Invalid,
        "this protocol info was altered after duplicate (its socket kind is not the one the \
         source pushed)",
    )
}

/// What seeking one connection's queue found.
pub(super) enum Sought {
    Found(OwnedFd),
    /// The token is there, for a socket of another kind.
    Altered,
    /// The token is there, but its descriptor did not fit in this process's table.
    NoRoom,
    NotHere,
}

/// Peeks through one connection's queue for `sought` (token and packed kind), a few
/// records at a time, noting in `seen` where every token it passes is (`slot`).
pub(super) fn seek_conn(
    batch: &mut Batch,
    conn: BorrowedFd<'_>,
    (token, kind): (u64, u32),
    slot: usize,
    seen: &mut HashMap<u64, usize>,
) -> Sought {
    loop {
        let records = match batch.peek(conn, false) {
            Ok(records) if !records.is_empty() => records,
            _ => return Sought::NotHere,
        };
        // Every token of the batch is noted, those after the one sought included: a
        // program that takes a source's sockets in order asks for them next, and its
        // next seeks then start on this connection.
        let mut sought = Sought::NotHere;
        for meta in records {
            let Some(entries) = wire::parse_push(batch.record(&meta)) else {
                continue;
            };
            let complete = meta.fds.len() == entries.len();
            let mut here = None;
            for (i, entry) in entries.enumerate() {
                let t = wire::token_of(entry.secret);
                seen.insert(t, slot);
                if t == token && here.is_none() {
                    here = Some((i, entry.kind));
                }
            }
            if let (Some((i, pushed_kind)), Sought::NotHere) = (here, &sought) {
                sought = if pushed_kind != kind {
                    Sought::Altered
                } else if !complete {
                    Sought::NoRoom
                } else {
                    // The other copies close with `meta`; their records stay queued.
                    meta.fds
                        .into_iter()
                        .nth(i)
                        .map_or(Sought::NotHere, Sought::Found)
                };
            }
        }
        if !matches!(sought, Sought::NotHere) {
            return sought;
        }
    }
}

/// A socket received in a push: its token, packed kind and descriptor.
type Pushed = (u64, u32, OwnedFd);

/// What one peeked push record turned out to be.
pub(super) enum Record {
    Sockets(Vec<Pushed>),
    /// Its descriptors did not all fit in this process's table: leave it queued.
    NoRoom,
    /// A record that breaks the protocol: it is consumed, and its descriptors closed.
    Broken,
}

pub(super) fn push_record(bytes: &[u8], meta: Meta) -> Record {
    let Some(entries) = wire::parse_push(bytes) else {
        return Record::Broken;
    };
    if meta.fds.len() < entries.len() && meta.truncated {
        return Record::NoRoom;
    }
    if meta.fds.len() != entries.len() {
        return Record::Broken;
    }
    Record::Sockets(
        entries
            .zip(meta.fds)
            .map(|(e, fd)| (wire::token_of(e.secret), e.kind, fd))
            .collect(),
    )
}
