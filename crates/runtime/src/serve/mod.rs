//! `edgerun serve`: answer inference requests over MQTT, alone or in a fleet.
//!
//! One async task owns the MQTT connection: it takes requests off the wire, hands them to
//! each service's bounded queue (answering `busy` at once when it is full), publishes the
//! answers the worker threads send back, and only then acknowledges the request, so a
//! crash or disconnect means redelivery rather than loss. Inference never runs on the async
//! threads. Before each request a worker asks the service's controller for an operating
//! point ([`adapt`]); telemetry of the device is sampled in the background and published
//! with the controllers' state. This module wires transport, queues, policy and services
//! together; it computes nothing itself.

pub mod adapt;
pub mod config;
pub mod learn;
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, TlsError, Transport};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use self::adapt::LanePolicy;
pub use self::adapt::PointChoice;
pub use self::adapt::ThreadUse;
pub use self::config::{ServeConfig, ServiceConfig};
use self::learn::LearnJob;
use self::stats::ServiceStats;
use crate::mqtt::envelope::Request;
use crate::mqtt::{BrokerUrl, EmbeddedBroker, Topics};
use crate::profiler::Activity;
use crate::services::{Output, Service, ServiceError, Serving};
use crate::telemetry::{Monitor, Sampler};

/// How often the device is sampled for the controllers (telemetry publishes less often).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// A request waiting for a worker, with the PUBLISH to acknowledge once it is answered.
struct Job {
    request: Request,
    publish: Publish,
    /// The connection it arrived on: packet ids mean nothing on a later connection.
    connection: u64,
}

/// An answer on its way back to the MQTT task.
struct Answer {
    request: Request,
    publish: Publish,
    connection: u64,
    body: Output,
}

/// One service with its queue and statistics.
struct Lane {
    service: Arc<dyn Service>,
    queue: SyncSender<Job>,
    stats: Arc<ServiceStats>,
    policy: Arc<LanePolicy>,
}

/// A running server. [`ServerHandle::shutdown`] stops it and waits; dropping the handle
/// also stops it, without waiting.
pub struct ServerHandle {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    /// Where the embedded broker listens, if this server started one.
    pub embedded_broker: Option<SocketAddr>,
}

impl ServerHandle {
    /// Publishes `offline`, disconnects, stops the embedded broker and waits for all of it.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }

    /// Whether the server has stopped by itself (it only does when it fails).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

/// Starts serving `services` as configured, on a thread of its own; returns once the
/// embedded broker (if any) listens and the client is started. `choices` says how each
/// service's operating point is chosen (missing: its default, fixed); services that learn
/// theirs are measured in the background, one after another.
pub fn start(
    config: ServeConfig,
    services: Vec<Arc<dyn Service>>,
    choices: BTreeMap<String, PointChoice>,
) -> Result<ServerHandle> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edgerun-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("edgerun-serve".into())
        .spawn(move || runtime.block_on(serve(config, services, choices, shutdown_rx, ready_tx)))?;
    match ready_rx.recv() {
        Ok(embedded_broker) => Ok(ServerHandle {
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            embedded_broker,
        }),
        // The server failed before it was ready: report why.
        Err(_) => Err(thread
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))?
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("server stopped before it was ready"))),
    }
}

async fn serve(
    config: ServeConfig,
    services: Vec<Arc<dyn Service>>,
    mut choices: BTreeMap<String, PointChoice>,
    mut shutdown: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Option<SocketAddr>>,
) -> Result<()> {
    let (embedded, broker) = match config.broker_url()? {
        Some(url) => (None, url),
        None => {
            let broker = EmbeddedBroker::start(
                config.embedded_bind,
                config.max_payload_bytes * 2 + 65_536,
                config.embedded_password_file.as_deref(),
                config.embedded_tls.as_ref(),
            )
            .await?;
            let addr = broker.local_addr();
            let url = BrokerUrl {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: false,
            };
            (Some(broker), url)
        }
    };
    let topics = Topics::new(&config.prefix, &config.device);
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    let monitor = Arc::new(Monitor::start(
        Sampler::new(&config.telemetry_root),
        SAMPLE_INTERVAL,
    ));
    let activity = Arc::new(Activity::default());
    let mut learn_jobs = Vec::new();
    let lanes: BTreeMap<String, Lane> = services
        .into_iter()
        .filter_map(|service| {
            let name = service.name().to_string();
            let settings = config.services.get(&name)?.clone();
            let choice = choices.remove(&name).unwrap_or_else(|| PointChoice::Fixed {
                why: match service.points() {
                    Some(_) => "no controller configured".into(),
                    None => "not adaptive: no operating points".into(),
                },
            });
            let threads = ThreadUse {
                configured: config.engine.threads,
                adapt: config.engine.adapts_threads(),
            };
            let policy = Arc::new(LanePolicy::new(
                &choice,
                monitor.clone(),
                threads,
                settings.workers,
            ));
            if let PointChoice::Learn(learning) = choice {
                learn_jobs.push(LearnJob {
                    service: service.clone(),
                    policy: policy.clone(),
                    learning,
                });
            }
            let lane = start_lane(
                service,
                &settings,
                policy,
                activity.clone(),
                answers_tx.clone(),
            );
            Some((name, lane))
        })
        .collect();
    let status_changed = Arc::new(tokio::sync::Notify::new());
    if !learn_jobs.is_empty() {
        let notify = status_changed.clone();
        learn::spawn(learn_jobs, activity.clone(), move || notify.notify_one());
    }
    let (client, eventloop) = connect(&config, &topics, &broker)?;
    let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<Incoming>();
    // The connection is driven by a task of its own, so that publishing (which waits for
    // room in the client's request channel) never waits on the loop that would drain it.
    let pump = tokio::spawn(pump(eventloop, incoming_tx, broker.to_string()));
    let started = Instant::now();
    let mut telemetry = tokio::time::interval(Duration::from_secs_f64(config.telemetry_interval_s));
    let mut server = Dispatcher {
        client: &client,
        topics: &topics,
        lanes: &lanes,
        config: &config,
        connection: 0,
        outstanding: 0,
    };
    // Ready once subscribed on a first connection (so a client that connects right after
    // `start` returns is heard), or after 10 s of trying: the server keeps reconnecting.
    let mut ready = Some(ready);
    let ready_by = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(ready_by);
    let say_ready = |ready: &mut Option<std::sync::mpsc::Sender<Option<SocketAddr>>>| {
        if let Some(ready) = ready.take() {
            let _ = ready.send(embedded.as_ref().map(EmbeddedBroker::local_addr));
        }
    };
    loop {
        tokio::select! {
            Some(event) = incoming.recv() => match event {
                Incoming::Connected => {
                    server.connection += 1;
                    if let Err(e) = subscribe(&client, &topics, &lanes).await {
                        tracing::warn!("subscribing: {e}");
                    }
                    publish_status(&client, &topics, &lanes, true).await;
                    say_ready(&mut ready);
                }
                Incoming::Publish(publish) => server.dispatch(*publish).await,
                // Before the first connection, a refusal that retrying cannot mend (bad
                // credentials, an untrusted or expired certificate, the wrong host) ends
                // the start with its reason instead of a silent retry loop.
                Incoming::Refused(why) if ready.is_some() => {
                    bail!("cannot connect to the broker {broker}: {why}")
                }
                Incoming::Refused(_) => {}
            },
            _ = &mut ready_by, if ready.is_some() => say_ready(&mut ready),
            _ = status_changed.notified() => publish_status(&client, &topics, &lanes, true).await,
            Some(answer) = answers.recv() => server.answer_from_worker(answer).await,
            _ = telemetry.tick() => {
                // Dropped rather than waited for while the broker is away.
                let body = telemetry_body(&topics, &lanes, &monitor, started);
                let _ = client.try_publish(topics.telemetry(), QoS::AtMostOnce, false, body);
            }
            _ = &mut shutdown => break,
        }
    }
    // Stop taking requests, answer what is already queued (for a while), then go offline.
    // Whatever is still unanswered stays unacknowledged and is redelivered to this device's
    // session when it returns. Measuring in the background stops at its next sample.
    activity.stop();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        unsubscribe(&client, &topics, &lanes),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.outstanding > 0 {
        match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Some(answer)) => server.answer_from_worker(answer).await,
            _ => break,
        }
    }
    let goodbye = async {
        publish_status(&client, &topics, &lanes, false).await;
        let _ = client.disconnect().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
    // The pump stops once the DISCONNECT is out; it is not waited for beyond that.
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    if let Some(broker) = embedded {
        broker.stop().await;
    }
    Ok(())
}

/// What the connection task passes on.
enum Incoming {
    /// (Re)connected: subscribe and announce.
    Connected,
    Publish(Box<Publish>),
    /// The broker refused us for a reason retrying will not mend (still retried).
    Refused(String),
}

/// Whether a connection error is one that retrying cannot mend: the broker refused our
/// credentials or identity, or the TLS handshake failed on a certificate (untrusted,
/// expired, issued for another host) or on our own client certificate.
fn is_refusal(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionRefused(code) => !matches!(
            code,
            ConnectReturnCode::ServerUnavailable
                | ConnectReturnCode::ServiceUnavailable
                | ConnectReturnCode::ServerBusy
                | ConnectReturnCode::UseAnotherServer
                | ConnectReturnCode::ServerMoved
                | ConnectReturnCode::QuotaExceeded
                | ConnectReturnCode::ConnectionRateExceeded
        ),
        // rustls reports a rejected certificate or a handshake alert through the stream's
        // I/O error; a reset or a timeout during the handshake is only the network.
        ConnectionError::Tls(TlsError::Io(e)) => e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        ConnectionError::Tls(_) => true,
        _ => false,
    }
}

/// Drives the MQTT connection: reconnects with backoff, forwards what arrives, and ends
/// after sending a DISCONNECT (polling on would reconnect).
async fn pump(mut eventloop: EventLoop, incoming: mpsc::UnboundedSender<Incoming>, broker: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(
                    "connected to {broker} (session present: {})",
                    ack.session_present
                );
                if incoming.send(Incoming::Connected).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if incoming.send(Incoming::Publish(Box::new(publish))).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if is_refusal(&e) && incoming.send(Incoming::Refused(e.to_string())).is_err() {
                    return;
                }
                tracing::warn!("MQTT connection to {broker}: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn connect(
    config: &ServeConfig,
    topics: &Topics,
    broker: &BrokerUrl,
) -> Result<(AsyncClient, EventLoop)> {
    let mut options = MqttOptions::new(
        format!("edgerun-{}", config.device),
        broker.host.clone(),
        broker.port,
    );
    if broker.tls {
        let tls = TlsConfiguration::Rustls(config.tls.client_config()?);
        options.set_transport(Transport::tls_with_config(tls));
    }
    options.set_keep_alive(Duration::from_secs(10));
    // A persistent session: requests received but not yet answered are redelivered after
    // a reconnect instead of being lost.
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    options.set_manual_acks(true);
    // At most this many requests in flight to us (every queue full, every worker busy, and
    // room to answer more `busy`); the broker holds back the rest.
    let capacity: usize = config.services.values().map(|s| s.queue + s.workers).sum();
    options.set_receive_maximum(Some((capacity * 2).clamp(16, 1024) as u16));
    // Big enough for any payload we answer `too_large` rather than never seeing.
    options.set_max_packet_size(Some((config.max_payload_bytes * 2 + 65_536) as u32));
    let offline =
        serde_json::to_vec(&json!({"online": false, "device": config.device})).expect("json");
    options.set_last_will(LastWill::new(
        topics.status(),
        offline,
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some(credentials) = config.credentials()? {
        options.set_credentials(credentials.username, credentials.password);
    }
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    Ok(AsyncClient::new(options, 64))
}

async fn subscribe(
    client: &AsyncClient,
    topics: &Topics,
    lanes: &BTreeMap<String, Lane>,
) -> Result<()> {
    client
        .subscribe(topics.device_requests(), QoS::AtLeastOnce)
        .await?;
    for name in lanes.keys() {
        client
            .subscribe(topics.fleet_subscription(name), QoS::AtLeastOnce)
            .await?;
    }
    Ok(())
}

/// Publishes the retained status; a failure is logged (the last will still covers us).
async fn publish_status(
    client: &AsyncClient,
    topics: &Topics,
    lanes: &BTreeMap<String, Lane>,
    online: bool,
) {
    let services: serde_json::Map<String, Value> = lanes
        .iter()
        .map(|(name, lane)| {
            let mut description = lane.service.describe();
            description["policy"] = lane.policy.state();
            (name.clone(), description)
        })
        .collect();
    let body = json!({
        "online": online,
        "version": env!("CARGO_PKG_VERSION"),
        "services": services,
        "request_topics": lanes.keys().map(|n| topics.device_request(n)).collect::<Vec<_>>(),
    });
    let body = serde_json::to_vec(&body).expect("JSON values always serialize");
    if let Err(e) = client
        .publish(topics.status(), QoS::AtLeastOnce, true, body)
        .await
    {
        tracing::warn!("publishing status: {e}");
    }
}

async fn unsubscribe(client: &AsyncClient, topics: &Topics, lanes: &BTreeMap<String, Lane>) {
    let _ = client.unsubscribe(topics.device_requests()).await;
    for name in lanes.keys() {
        let _ = client.unsubscribe(topics.fleet_subscription(name)).await;
    }
}

fn telemetry_body(
    topics: &Topics,
    lanes: &BTreeMap<String, Lane>,
    monitor: &Monitor,
    started: Instant,
) -> Vec<u8> {
    let services: serde_json::Map<String, Value> = lanes
        .iter()
        .map(|(name, lane)| {
            let mut stats = lane.stats.snapshot();
            stats["policy"] = lane.policy.state();
            (name.clone(), stats)
        })
        .collect();
    let body = json!({
        "topic": topics.telemetry(),
        "uptime_s": started.elapsed().as_secs_f64(),
        "device": *monitor.latest(),
        "services": services,
    });
    serde_json::to_vec(&body).expect("json")
}

/// The MQTT task's view of the server: where requests go and how answers leave.
struct Dispatcher<'a> {
    client: &'a AsyncClient,
    topics: &'a Topics,
    lanes: &'a BTreeMap<String, Lane>,
    config: &'a ServeConfig,
    /// Counts connections; an acknowledgement only goes out on the connection its
    /// request came in on.
    connection: u64,
    /// Requests handed to workers and not answered yet.
    outstanding: usize,
}

impl Dispatcher<'_> {
    /// Takes one PUBLISH: answers at once what cannot be queued, queues the rest.
    async fn dispatch(&mut self, publish: Publish) {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let Some(name) = self.topics.service_of(&topic) else {
            tracing::warn!("message on unexpected topic {topic:?} ignored");
            self.ack(&publish, self.connection).await;
            return;
        };
        let request = Request::from_publish(
            name,
            &publish,
            Instant::now(),
            self.config.max_payload_bytes,
        );
        let lane = self.lanes.get(name);
        if let Some(lane) = lane {
            lane.stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        let refuse = |why: &str| {
            // Nobody to answer, or nothing that should be answered: counted and logged,
            // never silently dropped.
            tracing::warn!("request on {topic} {why}; acknowledged without an answer");
            if let Some(lane) = lane {
                lane.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        };
        if publish.retain {
            refuse("is a retained message (it would be replayed on every subscribe)");
            return self.ack(&publish, self.connection).await;
        }
        if request.reply.is_none() {
            refuse("has no valid response topic or reply_to");
            return self.ack(&publish, self.connection).await;
        }
        let connection = self.connection;
        let error = |code, message: String| Answer {
            body: error_body(&ServiceError::new(code, message)),
            request: request.clone(),
            publish: publish.clone(),
            connection,
        };
        let Some(lane) = lane else {
            let answer = error("unknown_service", format!("no service {name:?} here"));
            return self.answer(answer).await;
        };
        if publish.payload.len() > self.config.max_payload_bytes {
            lane.stats.errors.fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "payload of {} bytes is above the limit of {}",
                publish.payload.len(),
                self.config.max_payload_bytes
            );
            return self.answer(error("too_large", message)).await;
        }
        lane.stats.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            request,
            publish,
            connection,
        };
        match lane.queue.try_send(job) {
            Ok(()) => self.outstanding += 1,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                lane.stats.queued.fetch_sub(1, Ordering::Relaxed);
                lane.stats.busy.fetch_add(1, Ordering::Relaxed);
                let busy = ServiceError::new("busy", "the service's queue is full; retry later");
                self.answer(Answer {
                    body: error_body(&busy),
                    request: job.request,
                    publish: job.publish,
                    connection: job.connection,
                })
                .await;
            }
        }
    }

    async fn answer_from_worker(&mut self, answer: Answer) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.answer(answer).await;
    }

    /// Publishes the answer, then acknowledges the request it answers.
    async fn answer(&self, mut answer: Answer) {
        if let Some(lane) = self.lanes.get(&answer.request.service) {
            lane.stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        if let Value::Object(map) = answer.body.json_mut() {
            // In a fleet, which device answered.
            map.insert("device".into(), Value::String(self.config.device.clone()));
        }
        if let Some(reply) = &answer.request.reply {
            let (payload, properties) = reply.encode(answer.body);
            let published = self
                .client
                .publish_with_properties(
                    reply.topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                    properties,
                )
                .await;
            if let Err(e) = published {
                tracing::warn!("answering on {:?}: {e}", reply.topic);
            }
        }
        self.ack(&answer.publish, answer.connection).await;
    }

    /// Acknowledges a request that came in on `connection`. On a later connection its
    /// packet id may name another request; the broker redelivers it instead (a resumed
    /// session) or has forgotten it (a new one), so no acknowledgement is sent.
    async fn ack(&self, publish: &Publish, connection: u64) {
        if connection != self.connection {
            return;
        }
        if let Err(e) = self.client.ack(publish).await {
            tracing::warn!("acknowledging a request: {e}");
        }
    }
}

fn error_body(error: &ServiceError) -> Output {
    Output::Json(json!({"error": {"code": error.code, "message": error.message}}))
}

/// Starts a service's worker threads behind a queue of `settings.queue` requests.
fn start_lane(
    service: Arc<dyn Service>,
    settings: &ServiceConfig,
    policy: Arc<LanePolicy>,
    activity: Arc<Activity>,
    answers: mpsc::UnboundedSender<Answer>,
) -> Lane {
    let (queue, jobs) = sync_channel::<Job>(settings.queue);
    let jobs = Arc::new(Mutex::new(jobs));
    let stats = Arc::new(ServiceStats::default());
    for index in 0..settings.workers {
        let (service, jobs, stats, policy, activity, answers) = (
            service.clone(),
            jobs.clone(),
            stats.clone(),
            policy.clone(),
            activity.clone(),
            answers.clone(),
        );
        let worker = Worker {
            service,
            policy,
            activity,
            stats,
        };
        std::thread::Builder::new()
            .name(format!("{}-worker-{index}", worker.service.name()))
            .spawn(move || worker.work(&jobs, &answers))
            .expect("spawning a worker thread");
    }
    Lane {
        service,
        queue,
        stats,
        policy,
    }
}

/// What a worker thread serves with.
struct Worker {
    service: Arc<dyn Service>,
    policy: Arc<LanePolicy>,
    /// Where serving is marked, so that background measurements can tell they overlapped.
    activity: Arc<Activity>,
    stats: Arc<ServiceStats>,
}

impl Worker {
    /// Takes jobs until the queue closes, answers each one exactly once.
    fn work(&self, jobs: &Mutex<Receiver<Job>>, answers: &mpsc::UnboundedSender<Answer>) {
        let stats = &self.stats;
        loop {
            let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            let Job {
                request,
                publish,
                connection,
            } = job;
            let body = if request.is_expired(Instant::now()) {
                stats.expired.fetch_add(1, Ordering::Relaxed);
                error_body(&ServiceError::new(
                    "expired",
                    "the request's message expiry passed while it waited",
                ))
            } else {
                let result = {
                    let _serving = self.activity.serving();
                    self.serve_one(&request)
                };
                stats.record_latency(request.received_at.elapsed().as_secs_f64() * 1e3);
                match result {
                    Ok(body) => body,
                    Err(error) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        error_body(&error)
                    }
                }
            };
            let answer = Answer {
                request,
                publish,
                connection,
                body,
            };
            if answers.send(answer).is_err() {
                return; // the server is shutting down; unacknowledged requests are redelivered
            }
        }
    }
}

impl Worker {
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
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let serving = Serving { point, deadline };
            service.answer(request.content_type.as_deref(), &request.body, serving)
        }))
        .unwrap_or_else(|_| Err(ServiceError::new("internal", "the service panicked")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_a_broker_that_is_away() {
        let io = |kind| std::io::Error::from(kind);
        let refused = |code| ConnectionError::ConnectionRefused(code);
        assert!(is_refusal(&refused(ConnectReturnCode::NotAuthorized)));
        assert!(is_refusal(&refused(ConnectReturnCode::BadUserNamePassword)));
        assert!(!is_refusal(&refused(ConnectReturnCode::ServerUnavailable)));
        assert!(!is_refusal(&refused(ConnectReturnCode::ServerBusy)));
        assert!(!is_refusal(&ConnectionError::Io(io(
            std::io::ErrorKind::ConnectionRefused
        ))));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let rejected = std::io::Error::new(std::io::ErrorKind::InvalidData, expired);
        assert!(is_refusal(&ConnectionError::Tls(TlsError::Io(rejected))));
        let reset = io(std::io::ErrorKind::ConnectionReset);
        assert!(!is_refusal(&ConnectionError::Tls(TlsError::Io(reset))));
    }
}
