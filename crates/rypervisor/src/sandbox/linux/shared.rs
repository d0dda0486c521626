//! Kernel state the threads of one process share — the descriptor table (`CLONE_FILES`), the
//! memory map (`CLONE_VM`), the signal handlers (`CLONE_SIGHAND`), the working directory
//! (`CLONE_FS`) — as one value behind a lock. `Clone` copies the value (a `fork` child's own
//! table, a snapshot); [`Shared::share`] hands out the same one (a thread's).
//!
//! The lock is held for one operation on the value, never across a wait: a caller that
//! blocks (a pipe, a futex) takes what it needs out first.

use std::sync::{Arc, Mutex, MutexGuard};

/// One piece of shared kernel state.
#[derive(Debug, Default)]
pub struct Shared<T>(Arc<Mutex<T>>);

impl<T> Shared<T> {
    /// A value of its own.
    pub fn new(value: T) -> Self {
        Self(Arc::new(Mutex::new(value)))
    }

    /// The value, for one operation (a poisoned lock still gives it: every operation leaves
    /// it consistent before anything can panic).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The same value under a second handle (a thread's).
    pub fn share(&self) -> Self {
        Self(self.0.clone())
    }

    /// Whether another handle holds the same value.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

impl<T: Clone> Clone for Shared<T> {
    /// A copy of the value, no longer shared.
    fn clone(&self) -> Self {
        Self::new(self.lock().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::Shared;

    #[test]
    fn clones_copy_and_shares_share() {
        let a = Shared::new(vec![1]);
        let b = a.share();
        let c = a.clone();
        b.lock().push(2);
        assert_eq!(*a.lock(), vec![1, 2]);
        assert_eq!(*c.lock(), vec![1]);
        assert!(a.is_shared() && !c.is_shared());
    }
}
