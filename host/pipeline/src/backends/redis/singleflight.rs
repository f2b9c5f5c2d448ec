//! Reads in flight by key, which concurrent reads of the same key join instead of
//! asking Redis again. An entry lives exactly as long as its read: it is removed when the
//! read finishes, and also when every caller has given up on it (a cancelled gRPC call),
//! so abandoned reads leave nothing behind.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared, WeakShared};

/// One read that every concurrent caller for its key shares.
pub(super) type SharedRead<T> = Shared<BoxFuture<'static, T>>;

/// The reads in flight by key, each with the number that tells it from a later read of
/// the same key. The map holds them weakly: the callers own them.
struct Entries<T> {
    by_key: HashMap<String, (u64, WeakShared<BoxFuture<'static, T>>)>,
    next: u64,
}

type InFlight<T> = Mutex<Entries<T>>;

/// Reads in flight, by key.
pub(super) struct SingleFlight<T> {
    in_flight: Arc<InFlight<T>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            in_flight: Arc::new(Mutex::new(Entries {
                by_key: HashMap::new(),
                next: 0,
            })),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The read of `key` in flight, or else a new one made by `read`.
    pub(super) fn read<F>(&self, key: &str, read: impl FnOnce() -> F) -> SharedRead<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut in_flight = lock(&self.in_flight);
        if let Some(joined) = in_flight.by_key.get(key).and_then(|(_, w)| w.upgrade()) {
            return joined;
        }
        in_flight.next += 1;
        let number = in_flight.next;
        // Dropped with the read, whether it finished or all its callers left; moved into
        // the future so that it is dropped even if the future is never polled.
        let forget = Forget {
            in_flight: Arc::clone(&self.in_flight),
            key: key.to_string(),
            number,
        };
        let read = read();
        let shared = async move {
            let _forget = forget;
            read.await
        }
        .boxed()
        .shared();
        if let Some(weak) = shared.downgrade() {
            in_flight.by_key.insert(key.to_string(), (number, weak));
        }
        shared
    }

    /// How many reads are in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.in_flight).by_key.len()
    }
}

fn lock<T>(in_flight: &InFlight<T>) -> MutexGuard<'_, Entries<T>> {
    in_flight.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a read's entry when the read is dropped: done (later reads of the key read
/// Redis again) or abandoned.
struct Forget<T> {
    in_flight: Arc<InFlight<T>>,
    key: String,
    number: u64,
}

impl<T> Drop for Forget<T> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.in_flight);
        // A new read of the key may have taken the place of this one (after its last
        // caller left, before this ran): that one is left alone.
        if in_flight
            .by_key
            .get(&self.key)
            .is_some_and(|(n, _)| *n == self.number)
        {
            in_flight.by_key.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_of_a_key_share_one_and_leave_no_entry() {
        let flight = SingleFlight::<u32>::default();
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = released.shared();
        let reads: Vec<_> = (0..10)
            .map(|_| {
                let (started, released) = (Arc::clone(&started), released.clone());
                flight.read("a", move || async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = released.await;
                    7
                })
            })
            .collect();
        let other = flight.read("b", || async { 8 });
        assert_eq!(flight.len(), 2);
        release.send(()).unwrap();
        assert_eq!(futures::future::join_all(reads).await, vec![7; 10]);
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(other.await, 8);
        assert_eq!(flight.len(), 0);
    }

    #[tokio::test]
    async fn a_read_every_caller_left_leaves_no_entry() {
        let flight = SingleFlight::<u32>::default();
        // Never polled, then dropped (a call cancelled before its read began).
        drop(flight.read("a", futures::future::pending));
        assert_eq!(flight.len(), 0);
        // Polled, then every caller gone (a call cancelled while Redis answers).
        let (first, second) = (
            flight.read("b", futures::future::pending),
            flight.read("b", || futures::future::ready(0)),
        );
        let polled = tokio::time::timeout(std::time::Duration::from_millis(10), first).await;
        assert!(polled.is_err());
        assert_eq!(flight.len(), 1);
        drop(second);
        assert_eq!(flight.len(), 0);
        // The next read of the key is a new one.
        assert_eq!(flight.read("b", || async { 9 }).await, 9);
    }
}
