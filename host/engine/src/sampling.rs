//! The sampling behind `plugin run --profile` ([`crate::profile`]): wasmtime's
//! [`wasmtime::GuestProfiler`] fed at epoch ticks, and the thread that advances the epoch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::{GuestProfiler, Trap, UpdateDeadline};

/// How often the stack is sampled by default: a rule call takes microseconds to
/// milliseconds, so the profiler's usual millisecond would see nothing.
pub const DEFAULT_INTERVAL: Duration = Duration::from_micros(10);

/// A profile being recorded: the epoch callback of the profiled store feeds it.
pub(crate) struct Sampling {
    profiler: GuestProfiler,
    /// When the profiled call started, for its deadline.
    started: Instant,
    deadline: Duration,
    /// When the last sample was taken: the next one's weight.
    last: Instant,
    /// Samples taken.
    samples: u64,
}

/// A finished profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The rule profiled.
    pub rule: String,
    /// How many stack samples it holds.
    pub samples: u64,
    /// The profile, in the Firefox profiler's processed format (JSON).
    pub json: Vec<u8>,
}

impl Sampling {
    pub(crate) fn new(profiler: GuestProfiler) -> Self {
        let now = Instant::now();
        Self {
            profiler,
            started: now,
            deadline: Duration::MAX,
            last: now,
            samples: 0,
        }
    }

    /// Starts the deadline of the next profiled call.
    pub(crate) fn restart(&mut self, deadline: Duration) {
        let now = Instant::now();
        self.started = now;
        self.last = now;
        self.deadline = deadline;
    }

    /// Takes a sample; a trap once the rule's deadline is past.
    pub(crate) fn tick(
        &mut self,
        store: impl wasmtime::AsContext,
    ) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        self.profiler.sample(store, now - self.last);
        self.last = now;
        self.samples += 1;
        if self.started.elapsed() > self.deadline {
            return Err(Trap::Interrupt.into());
        }
        Ok(UpdateDeadline::Continue(1))
    }

    /// The profile.
    pub(crate) fn finish(self, rule: &str) -> anyhow::Result<Profile> {
        let mut json = Vec::new();
        self.profiler
            .finish(&mut json)
            .map_err(anyhow::Error::from)?;
        Ok(Profile {
            rule: rule.to_string(),
            samples: self.samples,
            json,
        })
    }
}

/// The sampling behind `mutex`, even if a panic poisoned it.
pub(crate) fn locked(mutex: &Mutex<Sampling>) -> MutexGuard<'_, Sampling> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Advances `engine`'s epoch every `interval` until dropped (a busy loop: sleeping
/// cannot wake every few microseconds).
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub(crate) fn start(engine: wasmtime::Engine, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now() + interval;
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    engine.increment_epoch();
                    next += interval;
                }
                std::hint::spin_loop();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
