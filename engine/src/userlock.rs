//! Serializes one user's requests without a global lock.
//!
//! A user's draws must run one at a time (load standing → draw → make durable), or two devices
//! could both pass a cap. Locks live in sharded maps keyed by a hash of the user id: only users
//! with a request in flight take memory, and users on other shards never touch the same mutex.
//! A hash collision only makes two users wait for each other, never lets one skip a check.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Shards of the lock table; a power of two.
const SHARDS: usize = 64;
/// Most requests of one user waiting behind the one running.
pub const MAX_WAITING_PER_USER: usize = 32;

/// The lock table.
#[derive(Debug)]
pub struct UserLocks {
    shards: Vec<Mutex<HashMap<u64, VecDeque<oneshot::Sender<()>>>>>,
}

/// Held while a user's request runs; dropping it hands the lock to the next waiter.
#[derive(Debug)]
pub struct UserGuard<'a> {
    locks: &'a UserLocks,
    key: u64,
}

/// Too many of one user's requests are already waiting.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many concurrent requests for this user")]
pub struct Busy;

impl Default for UserLocks {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl UserLocks {
    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, VecDeque<oneshot::Sender<()>>>> {
        &self.shards[(key as usize) & (SHARDS - 1)]
    }

    /// Waits until no other request of `user` runs.
    pub async fn lock(&self, user: &str) -> Result<UserGuard<'_>, Busy> {
        let key = quota::schedule::fnv1a(user.as_bytes());
        let wait = {
            let mut shard = self.shard(key).lock();
            match shard.get_mut(&key) {
                None => {
                    shard.insert(key, VecDeque::new());
                    None
                }
                Some(queue) if queue.len() >= MAX_WAITING_PER_USER => return Err(Busy),
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push_back(tx);
                    Some(rx)
                }
            }
        };
        if let Some(rx) = wait {
            let mut pending = Pending {
                locks: self,
                key,
                rx,
                owned: false,
            };
            // Err only if the holder's Drop skipped us, which it does only for closed receivers.
            let _ = (&mut pending.rx).await;
            pending.owned = true;
        }
        Ok(UserGuard { locks: self, key })
    }

    fn release(&self, key: u64) {
        let mut shard = self.shard(key).lock();
        let Some(queue) = shard.get_mut(&key) else {
            return;
        };
        // Hand over to the first waiter still listening; a waiter whose request was dropped
        // has closed its receiver and is skipped.
        while let Some(next) = queue.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        shard.remove(&key);
    }

    /// Users with a request in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl Drop for UserGuard<'_> {
    fn drop(&mut self) {
        self.locks.release(self.key);
    }
}

/// A queued request; if it is dropped after the lock was handed to it, it passes the lock on.
struct Pending<'a> {
    locks: &'a UserLocks,
    key: u64,
    rx: oneshot::Receiver<()>,
    /// Set once the lock is ours; the returned guard then owns the release.
    owned: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.owned {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.locks.release(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_users_requests_never_overlap() {
        let locks = Arc::new(UserLocks::default());
        let inside = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let _g = locks.lock("alice").await.unwrap();
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(locks.in_flight(), 0, "the table empties");
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let locks = UserLocks::default();
        let _held = locks.lock("bob").await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..MAX_WAITING_PER_USER {
            let fut = Box::pin(locks.lock("bob"));
            waiting.push(fut);
        }
        // Poll each once so it queues.
        for f in waiting.iter_mut() {
            assert!(futures_util::poll!(f.as_mut()).is_pending());
        }
        assert!(locks.lock("bob").await.is_err());
        assert!(
            locks.lock("carol").await.is_ok(),
            "other users are not affected"
        );
    }
}
