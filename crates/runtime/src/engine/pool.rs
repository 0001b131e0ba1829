//! A pool of interchangeable instances that each serve one caller at a time (ONNX Runtime
//! sessions, which ort runs through `&mut`), opened only when callers overlap.
//!
//! A caller takes an idle instance, opens another while fewer than the limit exist, or waits
//! for one to come back. The pool must not know what the instances are or how to run them:
//! the caller passes the opening function.

use std::ops::{Deref, DerefMut};

use parking_lot::{Condvar, Mutex};

/// Instances of one kind, at least one of them opened.
pub struct Pool<T> {
    state: Mutex<State<T>>,
    returned: Condvar,
}

struct State<T> {
    idle: Vec<T>,
    opened: usize,
    /// How many may be open; lowered to what is open when opening another fails.
    limit: usize,
}

impl<T> Pool<T> {
    /// A pool holding `first`, which may open up to `limit` instances in all.
    pub fn new(first: T, limit: usize) -> Pool<T> {
        Pool {
            state: Mutex::new(State {
                idle: vec![first],
                opened: 1,
                limit: limit.max(1),
            }),
            returned: Condvar::new(),
        }
    }

    /// How many instances are open (idle or taken).
    pub fn opened(&self) -> usize {
        self.state.lock().opened
    }

    /// An idle instance; else one from `open` while fewer than the limit are open; else the
    /// next one given back. `open` runs outside the lock, so others can give back meanwhile.
    /// If it fails, the pool keeps to the instances it has (`failed` hears why) and waits.
    pub fn take<E>(
        &self,
        open: impl FnOnce() -> Result<T, E>,
        failed: impl FnOnce(E),
    ) -> Lease<'_, T> {
        let mut open = Some(open);
        let mut failed = Some(failed);
        let mut state = self.state.lock();
        loop {
            if let Some(item) = state.idle.pop() {
                return self.lease(item);
            }
            if state.opened < state.limit
                && let Some(open) = open.take()
            {
                state.opened += 1;
                drop(state);
                match open() {
                    Ok(item) => return self.lease(item),
                    Err(e) => {
                        state = self.state.lock();
                        state.opened -= 1;
                        state.limit = state.opened;
                        if let Some(failed) = failed.take() {
                            failed(e);
                        }
                        continue;
                    }
                }
            }
            self.returned.wait(&mut state);
        }
    }

    fn lease(&self, item: T) -> Lease<'_, T> {
        Lease {
            pool: self,
            item: Some(item),
        }
    }
}

/// An instance taken from a [`Pool`]; given back when dropped.
pub struct Lease<'a, T> {
    pool: &'a Pool<T>,
    item: Option<T>,
}

impl<T> Deref for Lease<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.item
            .as_ref()
            .expect("a lease holds its instance until dropped")
    }
}

impl<T> DerefMut for Lease<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item
            .as_mut()
            .expect("a lease holds its instance until dropped")
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool.state.lock().idle.push(item);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn never_fails(_: Infallible) {}

    #[test]
    fn opens_only_when_every_instance_is_taken() {
        let pool = Pool::new(0, 3);
        {
            let a = pool.take(|| Ok::<_, Infallible>(1), never_fails);
            assert_eq!(*a, 0, "the idle one first");
        }
        let a = pool.take(|| Ok::<_, Infallible>(1), never_fails);
        let b = pool.take(|| Ok::<_, Infallible>(1), never_fails);
        assert_eq!((*a, *b, pool.opened()), (0, 1, 2));
        drop((a, b));
        // Two idle: neither call opens a third.
        let a = pool.take(|| Ok::<_, Infallible>(9), never_fails);
        let b = pool.take(|| Ok::<_, Infallible>(9), never_fails);
        assert_eq!(pool.opened(), 2);
        assert_ne!(*a, 9);
        assert_ne!(*b, 9);
    }

    #[test]
    fn at_the_limit_a_caller_waits_for_one_to_come_back() {
        let pool = Arc::new(Pool::new(String::from("first"), 1));
        let held = pool.take(|| Ok::<_, Infallible>("second".into()), never_fails);
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut lease = pool.take(|| Ok::<_, Infallible>("second".into()), never_fails);
                lease.push_str(" again");
                lease.clone()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "the waiter must wait while the only one is taken"
        );
        drop(held);
        assert_eq!(waiter.join().unwrap(), "first again");
        assert_eq!(pool.opened(), 1);
    }

    #[test]
    fn a_failed_open_keeps_to_what_is_open_and_says_why() {
        let pool = Arc::new(Pool::new(7, 4));
        let held = pool.take(|| Ok::<_, String>(8), |_| unreachable!());
        let reasons = Arc::new(AtomicUsize::new(0));
        let waiter = {
            let (pool, reasons) = (pool.clone(), reasons.clone());
            std::thread::spawn(move || {
                let lease = pool.take(
                    || Err::<i32, _>("out of memory".to_string()),
                    |why| {
                        assert_eq!(why, "out of memory");
                        reasons.fetch_add(1, Ordering::SeqCst);
                    },
                );
                *lease
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "it waits for the one taken");
        drop(held);
        assert_eq!(waiter.join().unwrap(), 7, "served by the one given back");
        assert_eq!(reasons.load(Ordering::SeqCst), 1);
        // The limit is now the one open: a later caller waits rather than opening.
        let held = pool.take(|| Ok::<_, String>(99), |_| unreachable!());
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || *pool.take(|| Ok::<_, String>(99), |_| unreachable!()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.join().unwrap(), 7);
        assert_eq!(pool.opened(), 1);
    }
}
