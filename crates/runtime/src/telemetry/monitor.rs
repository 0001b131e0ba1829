//! A background thread that samples telemetry at a fixed interval and keeps the latest
//! [`Snapshot`] for readers that must not wait for the filesystem (the controller, the
//! telemetry publisher).
//!
//! It only samples and stores: no decisions, no publishing. Dropping the [`Monitor`] stops
//! the thread at once (it waits on a channel, not a sleep) and joins it.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};

use parking_lot::Mutex;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{Sampler, Snapshot};

/// Samples in the background; [`Monitor::latest`] is the newest snapshot.
pub struct Monitor {
    latest: Arc<Mutex<Arc<Snapshot>>>,
    /// Dropping it tells the thread to stop.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Takes one sample now, so [`Monitor::latest`] has data at once, then one every
    /// `interval` on a thread named `telemetry`. Should the thread fail to start, the
    /// first snapshot stays the latest and a warning is logged.
    pub fn start(mut sampler: Sampler, interval: Duration) -> Monitor {
        let latest = Arc::new(Mutex::new(Arc::new(sampler.sample())));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&latest);
        let spawned = thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                // Nothing is ever sent: the channel only disconnects, when the Monitor drops.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let snapshot = Arc::new(sampler.sample());
                    *shared.lock() = snapshot;
                }
            });
        let thread = match spawned {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!("telemetry thread did not start, telemetry will not update: {err}");
                None
            }
        };
        Monitor {
            latest,
            stop: Some(stop),
            thread,
        }
    }

    /// The newest snapshot (a clone of an `Arc`: cheap, never waits on I/O).
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.lock())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the sampler thread has already been reported by the panic hook.
            let _ = thread.join();
        }
    }
}
