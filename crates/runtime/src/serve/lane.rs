//! One service's lane: a bounded queue of requests and the worker threads that serve it.
//!
//! A worker takes a request, asks the lane's policy for an operating point ([`super::adapt`]),
//! runs the service, teaches the policy how long it took, and hands back exactly one
//! answer. A panic anywhere in that (decision, service, observation) answers the request
//! `internal` and the worker goes on with the next one; should a worker's loop unwind even
//! so, the request it held is still answered and the worker is started again. The lane
//! knows nothing of MQTT: what the transport needs to finish a request travels with it as
//! an opaque receipt.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::mpsc;

use super::adapt::LanePolicy;
use super::config::ServiceConfig;
use super::stats::ServiceStats;
use crate::mqtt::envelope::Request;
use crate::profiler::Activity;
use crate::services::{Output, Service, ServiceError, Serving};

/// A request waiting for a worker, with what the transport needs to finish it.
pub struct Job<R> {
    pub request: Request,
    pub receipt: R,
}

/// An answer on its way back to the transport.
pub struct Answer<R> {
    pub request: Request,
    pub receipt: R,
    pub body: Output,
}

/// One service with its queue, statistics and policy.
pub struct Lane<R> {
    pub service: Arc<dyn Service>,
    pub queue: SyncSender<Job<R>>,
    pub stats: Arc<ServiceStats>,
    pub policy: Arc<LanePolicy>,
}

/// The JSON body of an error answer.
pub fn error_body(error: &ServiceError) -> Output {
    Output::Json(json!({"error": {"code": error.code, "message": error.message}}))
}

/// Starts a service's worker threads behind a queue of `settings.queue` requests; answers
/// go to `answers`.
pub fn start<R: Send + 'static>(
    service: Arc<dyn Service>,
    settings: &ServiceConfig,
    policy: Arc<LanePolicy>,
    activity: Arc<Activity>,
    answers: mpsc::UnboundedSender<Answer<R>>,
) -> Lane<R> {
    let (queue, jobs) = sync_channel::<Job<R>>(settings.queue);
    let jobs = Arc::new(Mutex::new(jobs));
    let stats = Arc::new(ServiceStats::default());
    let worker = Arc::new(Worker {
        service: service.clone(),
        policy: policy.clone(),
        activity,
        stats: stats.clone(),
    });
    for index in 0..settings.workers {
        let (worker, jobs, answers) = (worker.clone(), jobs.clone(), answers.clone());
        std::thread::Builder::new()
            .name(format!("{}-worker-{index}", service.name()))
            .spawn(move || worker.run(&jobs, &answers))
            .expect("spawning a worker thread");
    }
    Lane {
        service,
        queue,
        stats,
        policy,
    }
}

/// How long a worker waits with nothing to do before it returns freed memory.
const IDLE_BEFORE_TRIM: Duration = Duration::from_millis(200);

/// What a lane's worker threads serve with.
struct Worker {
    service: Arc<dyn Service>,
    policy: Arc<LanePolicy>,
    /// Where serving is marked, so that background measurements can tell they overlapped.
    activity: Arc<Activity>,
    stats: Arc<ServiceStats>,
}

/// A job a worker has taken: answered exactly once, by [`Taken::finish`] or, should the
/// worker unwind before that, `internal` when it is dropped.
struct Taken<'a, R> {
    job: Option<Job<R>>,
    answers: &'a mpsc::UnboundedSender<Answer<R>>,
}

impl<R> Taken<'_, R> {
    fn request(&self) -> &Request {
        &self
            .job
            .as_ref()
            .expect("a taken job is held until finished")
            .request
    }

    /// Hands the answer back; `false` when the server has stopped taking answers.
    fn finish(mut self, body: Output) -> bool {
        let job = self.job.take().expect("a taken job is finished once");
        self.answers
            .send(Answer {
                request: job.request,
                receipt: job.receipt,
                body,
            })
            .is_ok()
    }
}

impl<R> Drop for Taken<'_, R> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            let internal = ServiceError::new("internal", "the worker failed serving this request");
            let _ = self.answers.send(Answer {
                request: job.request,
                receipt: job.receipt,
                body: error_body(&internal),
            });
        }
    }
}

impl Worker {
    /// The thread's life: serve until the queue closes; a loop that unwinds is counted and
    /// started again, so the lane keeps its workers.
    fn run<R>(&self, jobs: &Mutex<Receiver<Job<R>>>, answers: &mpsc::UnboundedSender<Answer<R>>) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.work(jobs, answers))) {
                Ok(()) => return,
                Err(payload) => {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "a {} worker failed ({}); starting it again",
                        self.service.name(),
                        panic_message(payload.as_ref())
                    );
                    // Not dropped: a payload whose drop panics would take the thread down.
                    std::mem::forget(payload);
                }
            }
        }
    }

    /// Waits for the next job; `None` once the queue is closed.
    ///
    /// Idle for a while, it gives what the last requests freed back to the system before
    /// sleeping on (a device idles between bursts at its loaded size, not at its busiest).
    /// Not after every request: a steady stream would pay for refaulting those pages each
    /// time. Not while a request is in service anywhere in the process either: the trim
    /// would take the pages that run is about to reuse (two OCR workers at one request at
    /// a time served 0.76x the images per second of one worker); it waits on and trims
    /// once everything is idle.
    fn next_job<R>(&self, jobs: &Mutex<Receiver<Job<R>>>) -> Option<Job<R>> {
        loop {
            // Bound apart: the guard must not live through the blocking wait below, which
            // takes the lock again.
            let next = jobs.lock().recv_timeout(IDLE_BEFORE_TRIM);
            match next {
                Ok(job) => return Some(job),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if self.activity.is_idle() => {
                    crate::allocator::return_free_memory();
                    return jobs.lock().recv().ok();
                }
                Err(RecvTimeoutError::Timeout) => continue,
            }
        }
    }

    /// Takes jobs until the queue closes, answers each one exactly once.
    fn work<R>(&self, jobs: &Mutex<Receiver<Job<R>>>, answers: &mpsc::UnboundedSender<Answer<R>>) {
        loop {
            let Some(job) = self.next_job(jobs) else {
                return;
            };
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            let taken = Taken {
                job: Some(job),
                answers,
            };
            let handled = catch_unwind(AssertUnwindSafe(|| self.handle(taken.request())));
            let (body, panicked) = match handled {
                Ok(body) => (body, None),
                Err(payload) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.panics.fetch_add(1, Ordering::Relaxed);
                    let message = panic_message(payload.as_ref());
                    tracing::error!(
                        "{} panicked serving a request: {message}",
                        self.service.name()
                    );
                    let error =
                        ServiceError::new("internal", format!("the service failed: {message}"));
                    (error_body(&error), Some(payload))
                }
            };
            if !taken.finish(body) {
                return; // the server is shutting down; unacknowledged requests are redelivered
            }
            // Dropped after the answer is out: should the payload's own drop panic, the
            // request is answered already and [`Worker::run`] starts the loop again.
            drop(panicked);
        }
    }

    /// Everything one request goes through: expiry, the decision, the service, the
    /// observation. Errors become error answers here; panics are caught by the caller.
    fn handle(&self, request: &Request) -> Output {
        let stats = &self.stats;
        if request.is_expired(Instant::now()) {
            stats.expired.fetch_add(1, Ordering::Relaxed);
            return error_body(&ServiceError::new(
                "expired",
                "the request's message expiry passed while it waited",
            ));
        }
        let result = {
            let _serving = self.activity.serving();
            self.serve_one(request)
        };
        stats.record_latency(request.received_at.elapsed().as_secs_f64() * 1e3);
        match result {
            Ok(body) => body,
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                error_body(&error)
            }
        }
    }

    /// Serves one request at the point its controller (or its pin) chooses, and teaches the
    /// controller how long it took. The answer says which point served it and why. Unless
    /// pinned, the request is due at its deadline or the SLO (counted from its arrival), and
    /// a service that can step down mid-request to meet it does.
    fn serve_one(&self, request: &Request) -> Result<Output, ServiceError> {
        let (service, policy) = (self.service.as_ref(), self.policy.as_ref());
        let steering = request
            .steering
            .as_ref()
            .map_err(|message| ServiceError::new("bad_request", message))?;
        let waited_ms = request.received_at.elapsed().as_secs_f64() * 1e3;
        let deciding = Instant::now();
        let decision = policy.decide(steering, waited_ms)?;
        let mut decision_time = deciding.elapsed();
        let point = decision
            .as_ref()
            .map(|d| d.point.as_str())
            .or(steering.point.as_deref());
        let deadline = match steering.point {
            Some(_) => None,
            None => policy
                .due_in_ms(steering)
                .and_then(|ms| Duration::try_from_secs_f64(ms.max(0.0) / 1e3).ok())
                .and_then(|due| request.received_at.checked_add(due)),
        };
        let started = Instant::now();
        let serving = Serving { point, deadline };
        let handled = service.answer(request.content_type.as_deref(), &request.body, serving)?;
        let service_ms = started.elapsed().as_secs_f64() * 1e3;
        if let Some(decision) = &decision {
            // A request that overrode the point's knobs ran something else: nothing to
            // learn. One that stepped down to meet its deadline and did exactly the work of
            // the point it names teaches the controller about that point: counted against
            // the decided point, its shorter run would read as the device getting faster.
            // One that also abandoned work of the decided point teaches nothing.
            let served = &handled.served;
            let decided = Some(decision.point.as_str());
            let served_as_decided = served.point.as_deref() == decided;
            let stepped_cleanly =
                served.stepped_down_from.as_deref() == decided && !served.abandoned_work;
            if (served_as_decided || stepped_cleanly)
                && let Some(point) = &served.point
            {
                let observing = Instant::now();
                policy.observe(point, service_ms);
                decision_time += observing.elapsed();
            }
            self.stats
                .record_decision(decision_time.as_secs_f64() * 1e6);
        }
        let mut output = handled.into_output();
        let json = output.json_mut();
        if decision.is_none() && steering.deadline_ms.is_some() {
            // Not adaptive: say so, rather than let the client believe its deadline was
            // planned for.
            json["policy"] = policy.state();
        }
        if let Some(decision) = decision {
            json["policy"] = json!({
                "reason": decision.reason,
                "predicted_ms": decision.predicted_ms,
                "waited_ms": waited_ms,
                "threads": policy.threads_now(),
            });
        }
        Ok(output)
    }
}

/// What a panic said, when it said it with a string (`panic!` with a message does).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(message), _) => (*message).to_string(),
        (_, Some(message)) => message.clone(),
        _ => "a panic without a message".into(),
    }
}
