//! Generations of workers: the reload protocol, with a rule for every failure.
//!
//! A generation is `workers` processes started together on the same sockets. It is in one
//! of three places:
//!
//! - **starting** (at most one): its workers were started; it waits for each to be ready.
//!   - All ready: it *takes over*. The serving generation, if any, moves to draining; this
//!     one serves; every waiting `sockshare reload` gets `ok`.
//!   - A worker exits before it is ready, a worker cannot be started, or the ready timeout
//!     passes: the reload *rolls back*. This generation is stopped (SIGTERM, it drains
//!     like an old one), the serving generation goes on untouched, and the waiters get the
//!     reason. The first generation has nothing to roll back to: serve stops with the
//!     reason.
//! - **serving** (at most one): a worker that exits is started again in its slot after a
//!   backoff (0.1 s, doubling up to 10 s; back to 0.1 s once a worker has lived 10 s). The
//!   sockets stay open in serve meanwhile: connections wait in the backlog, none is
//!   refused.
//! - **draining** (at most `max_draining`): SIGTERM was sent; a worker still running at the
//!   drain deadline gets SIGKILL. The generation is gone when its last worker is.
//!
//! A reload asked for while one is starting, or while `max_draining` generations drain,
//! is queued; all queued requests are one reload (coalesced), started as soon as it can
//! be, and every request among them gets its outcome. On SIGTERM or SIGINT serve stops:
//! queued and starting reloads fail, every worker gets SIGTERM, then SIGKILL at the drain
//! deadline (or at once on a second signal), and serve exits 0 when the last is gone.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use super::control;
use super::dispatch::{Candidate, Dispatcher, Link, SYNC_EVERY};
use super::log;
use super::notify::{monotonic_usec, Manager, Message};
use super::workers::{self, Plan};

/// How a worker shows it is ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Readiness {
    /// `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Still running this long after it started.
    Alive(Duration),
}

impl FromStr for Readiness {
    type Err = String;

    fn from_str(s: &str) -> Result<Readiness, String> {
        match s.split_once(':') {
            None if s == "notify" => Ok(Readiness::Notify),
            Some(("alive", secs)) => crate::seconds(secs).map(Readiness::Alive),
            _ => Err(format!("{s:?}: expected notify or alive:SECS")),
        }
    }
}

/// The timing rules of one serve.
pub struct Config {
    pub workers: usize,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    pub readiness: Readiness,
    pub max_draining: usize,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that lived this long resets its slot's backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(10);

struct Worker {
    child: Child,
    slot: usize,
    started: Instant,
    ready: bool,
    /// Under `--dispatch`: serve's end of the worker's channel.
    link: Option<Link>,
}

impl Worker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            // The child is not yet reaped, so the pid is still this worker's.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

struct Generation {
    number: u64,
    workers: Vec<Worker>,
}

impl Generation {
    fn pids(&self) -> String {
        let pids: Vec<String> = self.workers.iter().map(|w| w.pid().to_string()).collect();
        pids.join(",")
    }

    fn signal_all(&self, signal: Signal) {
        self.workers.iter().for_each(|w| w.signal(signal));
    }

    /// Reaps the workers that exited, returning them with their status.
    fn reap(&mut self, look: bool) -> Vec<(Worker, ExitStatus)> {
        let mut gone = Vec::new();
        if !look {
            return gone;
        }
        let mut i = 0;
        while i < self.workers.len() {
            match self.workers[i].child.try_wait() {
                Ok(Some(status)) => gone.push((self.workers.remove(i), status)),
                _ => i += 1,
            }
        }
        gone
    }
}

struct Starting {
    generation: Generation,
    deadline: Instant,
    waiters: Vec<UnixStream>,
}

struct Draining {
    generation: Generation,
    deadline: Instant,
}

/// A slot of the serving generation to start again.
struct Restart {
    slot: usize,
    at: Instant,
}

/// All generations of one serve, and what is queued.
pub struct Supervisor<'a> {
    config: Config,
    plan: Plan<'a>,
    manager: Option<Manager>,
    numbers: u64,
    starting: Option<Starting>,
    serving: Option<Generation>,
    draining: Vec<Draining>,
    /// Waiters of the queued reload; `Some` when one is queued.
    queued: Option<Vec<UnixStream>>,
    restarts: Vec<Restart>,
    /// Backoff of each slot of the serving generation.
    backoff: Vec<Duration>,
    /// Set by the first stop signal: the deadline for every worker.
    stopping: Option<Instant>,
    /// Set when serve should exit, with how.
    outcome: Option<Result<(), String>>,
    /// Under `--dispatch`: the accepting side.
    dispatcher: Option<Dispatcher<'a>>,
    /// When children were last looked at (`waitpid`), and whether a SIGCHLD came since:
    /// they are looked at on SIGCHLD, and at least once a second in case signals
    /// coalesced, not at every turn of the loop (one `waitpid` per worker, which under
    /// `--dispatch` turns once per few connections).
    reaped: Instant,
    sigchld: bool,
}

impl<'a> Supervisor<'a> {
    pub fn new(
        config: Config,
        plan: Plan<'a>,
        manager: Option<Manager>,
        dispatcher: Option<Dispatcher<'a>>,
    ) -> Supervisor<'a> {
        let backoff = vec![BACKOFF_FIRST; config.workers];
        Supervisor {
            config,
            plan,
            manager,
            numbers: 0,
            starting: None,
            serving: None,
            draining: Vec::new(),
            queued: None,
            restarts: Vec::new(),
            backoff,
            stopping: None,
            outcome: None,
            dispatcher,
            reaped: Instant::now(),
            sigchld: true,
        }
    }

    /// Starts one worker of generation `number`, with its channel under `--dispatch`.
    fn spawn(&self, number: u64, slot: usize) -> std::io::Result<Worker> {
        let (link, theirs) = match self.dispatcher {
            Some(_) => {
                let (link, theirs) = Link::pair()?;
                (Some(link), Some(theirs))
            }
            None => (None, None),
        };
        let child = workers::spawn(&self.plan, number, theirs.as_ref())?;
        Ok(Worker {
            child,
            slot,
            started: Instant::now(),
            ready: false,
            link,
        })
    }

    /// Starts the first generation.
    pub fn start(&mut self) {
        self.begin(Vec::new());
    }

    /// `Some` once serve should exit: `Ok` after a stop, `Err` when the first generation
    /// failed.
    pub fn finished(&mut self) -> Option<Result<(), String>> {
        self.outcome.take()
    }

    fn tell_manager(&self, state: &str) {
        if let Some(m) = &self.manager {
            if let Err(e) = m.send(state, &[]) {
                log(format_args!("cannot notify the service manager: {e}"));
            }
        }
    }

    /// Starts a generation for `waiters`.
    fn begin(&mut self, waiters: Vec<UnixStream>) {
        self.numbers += 1;
        let number = self.numbers;
        if self.serving.is_some() {
            self.tell_manager(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
        let mut generation = Generation {
            number,
            workers: Vec::new(),
        };
        let mut failure = None;
        for slot in 0..self.config.workers {
            match self.spawn(number, slot) {
                Ok(worker) => generation.workers.push(worker),
                Err(e) => {
                    failure = Some(format!("cannot start a worker: {e}"));
                    break;
                }
            }
        }
        log(format_args!(
            "generation {number}: started workers {}",
            generation.pids()
        ));
        self.starting = Some(Starting {
            generation,
            deadline: Instant::now() + self.config.ready_timeout,
            waiters,
        });
        if let Some(why) = failure {
            self.roll_back(why);
        }
    }

    /// A reload request, from SIGHUP (no waiter) or a control client.
    pub fn reload(&mut self, waiter: Option<UnixStream>, from: &str) {
        if self.stopping.is_some() {
            if let Some(w) = waiter {
                control::answer(w, &Err("serve is stopping".into()));
            }
            return;
        }
        log(format_args!("reload asked for ({from})"));
        let queued = self.queued.get_or_insert_with(Vec::new);
        queued.extend(waiter);
        self.begin_queued();
    }

    /// Starts the queued reload if nothing holds it back.
    fn begin_queued(&mut self) {
        if self.starting.is_some() || self.stopping.is_some() {
            return;
        }
        if self.draining.len() >= self.config.max_draining {
            if self.queued.is_some() {
                log(format_args!(
                    "reload queued: {} generations still draining",
                    self.draining.len()
                ));
            }
            return;
        }
        if let Some(waiters) = self.queued.take() {
            self.begin(waiters);
        }
    }

    pub fn on_signal(&mut self, signal: i32) {
        match signal {
            libc::SIGHUP => self.reload(None, "SIGHUP"),
            libc::SIGTERM | libc::SIGINT => self.stop(signal),
            libc::SIGCHLD => self.sigchld = true,
            _ => {}
        }
    }

    pub fn on_message(&mut self, message: &Message) {
        let pid = message.pid;
        let found = self
            .starting
            .iter_mut()
            .map(|s| &mut s.generation)
            .chain(self.serving.iter_mut())
            .find_map(|g| {
                let number = g.number;
                g.workers
                    .iter_mut()
                    .find(|w| w.pid() == pid)
                    .map(|w| (w, number))
            });
        let Some((worker, number)) = found else {
            // Not a worker of a live generation (a draining one, a stranger): nothing it
            // says decides anything.
            return;
        };
        if let Some(status) = message.get("STATUS") {
            log(format_args!("generation {number}: worker {pid}: {status}"));
        }
        if message.says("READY", "1") && !worker.ready && self.config.readiness == Readiness::Notify
        {
            worker.ready = true;
            log(format_args!("generation {number}: worker {pid} ready"));
        }
    }

    /// Stops serving: every worker gets SIGTERM (SIGKILL on a second signal).
    fn stop(&mut self, signal: i32) {
        let name = if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if self.stopping.is_some() {
            log(format_args!("{name} again: killing every worker"));
            self.generations().for_each(|g| g.signal_all(Signal::KILL));
            return;
        }
        log(format_args!("{name}: stopping every worker"));
        self.tell_manager("STOPPING=1");
        if let Some(d) = &mut self.dispatcher {
            d.drop_backlog();
        }
        self.stopping = Some(Instant::now() + self.config.drain_timeout);
        self.restarts.clear();
        for w in self.queued.take().into_iter().flatten() {
            control::answer(w, &Err("serve is stopping".into()));
        }
        if let Some(s) = self.starting.take() {
            for w in s.waiters {
                control::answer(w, &Err("serve is stopping".into()));
            }
            self.drain(s.generation);
        }
        if let Some(g) = self.serving.take() {
            self.drain(g);
        }
    }

    /// Every generation: the starting one, the serving one, the draining ones.
    fn generations(&self) -> impl Iterator<Item = &Generation> {
        self.starting
            .iter()
            .map(|s| &s.generation)
            .chain(self.serving.iter())
            .chain(self.draining.iter().map(|d| &d.generation))
    }

    fn generations_mut(&mut self) -> impl Iterator<Item = &mut Generation> {
        self.starting
            .iter_mut()
            .map(|s| &mut s.generation)
            .chain(self.serving.iter_mut())
            .chain(self.draining.iter_mut().map(|d| &mut d.generation))
    }

    fn drain(&mut self, generation: Generation) {
        if self.dispatcher.is_some() {
            // A dispatch worker's stop request is the end of its channel: it finishes
            // what it was handed (a SIGTERM's default action would cut those short).
            for link in generation.workers.iter().filter_map(|w| w.link.as_ref()) {
                link.close();
            }
        } else {
            generation.signal_all(Signal::TERM);
        }
        let deadline = match self.stopping {
            Some(at) => at,
            None => Instant::now() + self.config.drain_timeout,
        };
        self.draining.push(Draining {
            generation,
            deadline,
        });
    }

    /// The starting generation failed: stop it, keep the serving one, answer the waiters.
    fn roll_back(&mut self, why: String) {
        let Some(s) = self.starting.take() else {
            return;
        };
        let number = s.generation.number;
        if self.serving.is_none() {
            log(format_args!("generation {number} failed: {why}"));
            // Nothing served yet, so nothing to drain: serve exits with no child left.
            s.generation.signal_all(Signal::KILL);
            for mut w in s.generation.workers {
                let _ = w.child.wait();
            }
            self.outcome = Some(Err(format!("the first generation failed: {why}")));
            return;
        }
        let serving = self.serving.as_ref().map_or(0, |g| g.number);
        log(format_args!(
            "generation {number} failed, generation {serving} goes on serving: {why}"
        ));
        for w in s.waiters {
            control::answer(
                w,
                &Err(format!(
                    "generation {number} failed: {why}; generation {serving} goes on serving"
                )),
            );
        }
        self.tell_manager(&format!("READY=1\nSTATUS=reload failed: {why}"));
        self.drain(s.generation);
        self.begin_queued();
    }

    /// The starting generation is ready: it takes over.
    fn take_over(&mut self) {
        let Some(s) = self.starting.take() else {
            return;
        };
        let number = s.generation.number;
        let what = format!(
            "generation {number} serving, workers {}",
            s.generation.pids()
        );
        if let Some(old) = self.serving.replace(s.generation) {
            log(format_args!(
                "generation {number} ready; generation {} drains (workers {})",
                old.number,
                old.pids()
            ));
            self.drain(old);
        } else {
            log(format_args!("generation {number} ready"));
        }
        self.restarts.clear();
        self.backoff = vec![BACKOFF_FIRST; self.config.workers];
        for w in s.waiters {
            control::answer(w, &Ok(what.clone()));
        }
        self.tell_manager(&format!(
            "READY=1\nMAINPID={}\nSTATUS={what}",
            std::process::id()
        ));
        self.begin_queued();
    }

    /// Under `--dispatch`, what the loop waits on besides its own: the listeners (not
    /// once stopping). Workers never write to their channels (see `dispatch`).
    pub fn watch(&self) -> impl Iterator<Item = BorrowedFd<'_>> + '_ {
        self.dispatcher
            .iter()
            .filter(|_| self.stopping.is_none())
            .flat_map(Dispatcher::watch)
    }

    /// Under `--dispatch`: reads every worker's ledger, accepts on the listeners in
    /// `ready`, and hands out what serve holds to the serving generation.
    pub fn dispatch(&mut self, ready: &[i32]) {
        if self.dispatcher.is_none() {
            return;
        }
        let links = self
            .generations_mut()
            .flat_map(|g| &mut g.workers)
            .filter_map(|w| w.link.as_mut());
        for link in links {
            link.sync();
        }
        if self.stopping.is_some() {
            return;
        }
        let Some(d) = &mut self.dispatcher else {
            return;
        };
        d.accept(ready);
        if !d.has_backlog() {
            return;
        }
        let Some(g) = &mut self.serving else { return };
        let mut candidates: Vec<Candidate<'_>> = g
            .workers
            .iter_mut()
            .filter(|w| w.ready)
            .filter_map(|w| {
                let pid = w.pid();
                w.link.as_mut().map(|link| Candidate { pid, link })
            })
            .collect();
        d.hand_out(&mut candidates);
    }

    /// When `tick` or `dispatch` next has something to do: at the latest in a second, as
    /// children are looked at on SIGCHLD and at least once a second (see `reaped`); under
    /// `--dispatch`, within `SYNC_EVERY` while serve holds connections no worker has
    /// taken yet (handed or not).
    pub fn next_deadline(&self) -> Instant {
        let mut at = Instant::now() + Duration::from_secs(1);
        let holds = self
            .dispatcher
            .as_ref()
            .is_some_and(Dispatcher::has_backlog)
            || self
                .generations()
                .flat_map(|g| &g.workers)
                .filter_map(|w| w.link.as_ref())
                .any(Link::holds);
        if holds {
            at = at.min(Instant::now() + SYNC_EVERY);
        }
        if let Some(s) = &self.starting {
            at = at.min(s.deadline);
            if let Readiness::Alive(after) = self.config.readiness {
                let alive = s.generation.workers.iter().map(|w| w.started + after);
                at = alive.fold(at, Instant::min);
            }
        }
        self.draining
            .iter()
            .map(|d| d.deadline)
            .chain(self.restarts.iter().map(|r| r.at))
            .chain(self.stopping)
            .fold(at, Instant::min)
    }

    /// Reaps workers and acts on the deadlines that passed.
    pub fn tick(&mut self, now: Instant) {
        let look = std::mem::take(&mut self.sigchld) || now >= self.reaped + Duration::from_secs(1);
        if look {
            self.reaped = now;
        }
        self.reap_starting(now, look);
        self.reap_serving(now, look);
        self.reap_draining(now, look);
        for r in std::mem::take(&mut self.restarts) {
            if r.at > now {
                self.restarts.push(r);
                continue;
            }
            self.restart(r.slot);
        }
        if self.stopping.is_some()
            && self.starting.is_none()
            && self.serving.is_none()
            && self.draining.is_empty()
        {
            log(format_args!("every worker has exited; serve exits"));
            self.outcome.get_or_insert(Ok(()));
        }
    }

    fn reap_starting(&mut self, now: Instant, look: bool) {
        let Some(s) = &mut self.starting else { return };
        let number = s.generation.number;
        if let Some((w, status)) = s.generation.reap(look).into_iter().next() {
            let why = format!(
                "worker {} exited ({}) before it was ready",
                w.pid(),
                describe(status)
            );
            self.roll_back(why);
            return;
        }
        if let Readiness::Alive(after) = self.config.readiness {
            for w in &mut s.generation.workers {
                if !w.ready && now >= w.started + after {
                    w.ready = true;
                    log(format_args!(
                        "generation {number}: worker {} counted ready (alive {} s)",
                        w.pid(),
                        after.as_secs_f64()
                    ));
                }
            }
        }
        if s.generation.workers.iter().all(|w| w.ready) {
            self.take_over();
        } else if now >= s.deadline {
            let ready = s.generation.workers.iter().filter(|w| w.ready).count();
            let why = format!(
                "not ready within {} s ({ready} of {} workers ready)",
                self.config.ready_timeout.as_secs_f64(),
                s.generation.workers.len()
            );
            self.roll_back(why);
        }
    }

    fn reap_serving(&mut self, now: Instant, look: bool) {
        let Some(g) = &mut self.serving else { return };
        let number = g.number;
        for (mut w, status) in g.reap(look) {
            if let (Some(d), Some(link)) = (&mut self.dispatcher, w.link.take()) {
                d.requeue(link.orphans());
            }
            let lived = now.saturating_duration_since(w.started);
            let backoff = &mut self.backoff[w.slot];
            if lived >= BACKOFF_RESET {
                *backoff = BACKOFF_FIRST;
            }
            log(format_args!(
                "generation {number}: worker {} exited ({}); restarting it in {} s",
                w.pid(),
                describe(status),
                backoff.as_secs_f64()
            ));
            self.restarts.push(Restart {
                slot: w.slot,
                at: now + *backoff,
            });
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
        }
        // A worker started in place of one that exited serves as soon as it can; it
        // counts as ready (for dispatch) as the first ones did.
        if let (Some(g), Readiness::Alive(after)) = (&mut self.serving, self.config.readiness) {
            for w in g.workers.iter_mut().filter(|w| now >= w.started + after) {
                w.ready = true;
            }
        }
    }

    fn reap_draining(&mut self, now: Instant, look: bool) {
        let mut freed = false;
        self.draining.retain_mut(|d| {
            for (mut w, status) in d.generation.reap(look) {
                if let (Some(dispatcher), Some(link)) = (&mut self.dispatcher, w.link.take()) {
                    dispatcher.requeue(link.orphans());
                }
                log(format_args!(
                    "generation {}: worker {} exited ({})",
                    d.generation.number,
                    w.pid(),
                    describe(status)
                ));
            }
            if now >= d.deadline && !d.generation.workers.is_empty() {
                log(format_args!(
                    "generation {}: drain deadline passed, killing workers {}",
                    d.generation.number,
                    d.generation.pids()
                ));
                d.generation.signal_all(Signal::KILL);
                // Reaped at the next tick; not killed twice.
                d.deadline = now + Duration::from_secs(3600);
            }
            if d.generation.workers.is_empty() {
                log(format_args!("generation {} is gone", d.generation.number));
                freed = true;
                return false;
            }
            true
        });
        if freed {
            self.begin_queued();
        }
    }

    fn restart(&mut self, slot: usize) {
        let Some(number) = self.serving.as_ref().map(|g| g.number) else {
            return;
        };
        match self.spawn(number, slot) {
            Ok(worker) => {
                log(format_args!(
                    "generation {number}: worker {} started in place of the one that exited",
                    worker.pid()
                ));
                if let Some(g) = &mut self.serving {
                    g.workers.push(worker);
                }
            }
            Err(e) => {
                let backoff = &mut self.backoff[slot];
                log(format_args!(
                    "generation {number}: cannot start a worker ({e}); trying again in {} s",
                    backoff.as_secs_f64()
                ));
                self.restarts.push(Restart {
                    slot,
                    at: Instant::now() + *backoff,
                });
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (_, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}
