//! `edgerun serve`: answer inference requests over MQTT, alone or in a fleet.
//!
//! One async task owns the server's two MQTT connections: the device's persistent session
//! (its own request topics, status with the last will, telemetry) and a fleet session that
//! ends with its connection (the fleet's shared subscriptions only, so a member that dies
//! stops receiving fleet work as soon as the broker notices). The task takes requests off
//! the wire, answers again what it answered recently ([`replay`]), hands the rest to each
//! service's bounded queue ([`lane`]; `busy` at once when it is full), publishes the answers
//! the workers send back, and only then acknowledges the request, so a crash or disconnect
//! means redelivery (or, for fleet work, the client's retry) rather than loss. Inference
//! never runs on the async threads. Before each request a worker asks the service's
//! controller for an operating point ([`adapt`]); telemetry of the device is sampled in
//! the background and published with the controllers' state. This module wires
//! transport, queues, policy and services together; it computes nothing itself.

pub mod adapt;
pub mod config;
mod lane;
pub mod learn;
pub mod replay;
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, LastWill, Packet, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, TlsError, Transport};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub use self::adapt::PointChoice;
pub use self::adapt::ThreadUse;
use self::adapt::{LanePolicy, PlanAhead};
pub use self::config::{ServeConfig, ServiceConfig};
use self::lane::{Answer, Job, Lane, error_body};
use self::learn::LearnJob;
use self::replay::{Admission, Replay, RequestKey};
use crate::mqtt::envelope::Request;
use crate::mqtt::{BrokerUrl, EmbeddedBroker, Topics};
use crate::profiler::Activity;
use crate::services::{Output, Service, ServiceError, WarmUp};
use crate::telemetry::{Monitor, Sampler};

/// How often the device is sampled for the controllers (telemetry publishes less often).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Our publishes that may await the broker's ack at once, per session; beyond it rumqttc
/// holds the next answer until an ack comes (on loopback, within a millisecond).
const OUTGOING_IN_FLIGHT: u16 = 1024;

/// Which of the server's two MQTT connections something travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The device's persistent session: requests to this device, status, telemetry.
    Device,
    /// The fleet's shared subscriptions, on a session that ends with its connection.
    Fleet,
}

impl Link {
    const BOTH: [Link; 2] = [Link::Device, Link::Fleet];

    fn index(self) -> usize {
        self as usize
    }
}

/// When the server may say it is ready: once both connections are up and the broker has
/// acknowledged each one's subscriptions. A SUBSCRIBE handed to the client is not yet in
/// force at the broker, and a broker drops a request that no one is subscribed to: a
/// client that connected and published right after [`start`] returned would go unanswered
/// (CI lost the first request of a test that way, when the SUBSCRIBE went out late).
#[derive(Debug, Default)]
struct Readiness {
    /// By [`Link::index`]: connected at least once.
    connected: [bool; 2],
    /// By [`Link::index`]: SUBSCRIBEs sent on the current connection and not acknowledged.
    awaiting: [usize; 2],
}

impl Readiness {
    /// `link` (re)connected and sent `subscribes` SUBSCRIBE packets.
    fn connected(&mut self, link: Link, subscribes: usize) {
        self.connected[link.index()] = true;
        self.awaiting[link.index()] = subscribes;
    }

    /// The broker answered one of `link`'s SUBSCRIBEs (granted or refused: waiting longer
    /// would not change it).
    fn acknowledged(&mut self, link: Link) {
        let awaiting = &mut self.awaiting[link.index()];
        *awaiting = awaiting.saturating_sub(1);
    }

    fn is_ready(&self) -> bool {
        self.connected.iter().all(|&c| c) && self.awaiting.iter().all(|&n| n == 0)
    }
}

/// Where a request came in: its acknowledgement goes back on that connection only
/// (packet ids mean nothing on a later one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    link: Link,
    connection: u64,
}

/// What finishing a request takes besides its answer.
struct Receipt {
    publish: Publish,
    origin: Origin,
    /// Its key in the replay cache, when it was admitted there as new.
    key: Option<RequestKey>,
}

/// An answer as it was published, kept to be published again to a request's copies.
#[derive(Clone)]
struct Sent {
    payload: Bytes,
    properties: PublishProperties,
}

impl Sent {
    /// What keeping it costs: the payload and the properties' contents.
    fn bytes(&self) -> usize {
        let p = &self.properties;
        let user: usize = p
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.payload.len()
            + p.correlation_data.as_ref().map_or(0, |c| c.len())
            + p.content_type.as_ref().map_or(0, String::len)
            + user
    }
}

/// A copy of a request in flight, waiting to be acknowledged once the original is answered.
type Waiting = (Publish, Origin);

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

/// The server's background work, on one thread so that the two never plan the same model
/// at once: first the models of the points each of `services` may switch to are planned
/// for typical inputs (loading planned only the default points', so that the device comes
/// online sooner), then the points of `learn_jobs` are measured. `services` are those
/// whose point may change: a controller switching under load must find its next point
/// ready. With a controller, that is its candidates (the points on its quality/latency
/// front); while the points are still to be measured, every point. A service held at its
/// default plans another point only when a request pins it (or steps down to it under a
/// deadline), so a device that serves one point does not keep the others' plans (all four
/// services, `bench memory --no-adapt`: 171 MiB instead of 204 after 1000 requests); it
/// also drops the graphs its other points' models parsed while loading (`None` in
/// `services`).
fn spawn_background(
    services: Vec<(Arc<dyn Service>, Option<PlanAhead>)>,
    learn_jobs: Vec<LearnJob>,
    activity: Arc<Activity>,
    changed: impl Fn() + Send + 'static,
) {
    std::thread::Builder::new()
        .name("edgerun-background".into())
        .spawn(move || {
            let started = Instant::now();
            for (service, points) in &services {
                match points {
                    Some(points) => {
                        if let Err(e) = service.warm_up(points.scope()) {
                            // Its requests still plan what they need when they come.
                            tracing::warn!(
                                "{}: planning its other points failed: {e}",
                                service.name()
                            );
                        }
                    }
                    None => service.release_outside(WarmUp::DefaultPoint),
                }
            }
            // This thread's arena keeps the planning scratch at its top.
            crate::allocator::return_free_memory();
            tracing::info!(
                "every point planned, {:.0} ms after online",
                started.elapsed().as_secs_f64() * 1e3
            );
            learn::run(learn_jobs, &activity, changed);
        })
        .expect("spawning the background thread");
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
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer<Receipt>>();
    let monitor = Arc::new(Monitor::start(
        Sampler::new(&config.telemetry_root),
        SAMPLE_INTERVAL,
    ));
    let activity = Arc::new(Activity::default());
    let mut learn_jobs = Vec::new();
    let mut warming = Vec::new();
    let lanes: BTreeMap<String, Lane<Receipt>> = services
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
            warming.push((service.clone(), choice.plan_ahead()));
            if let PointChoice::Learn(learning) = choice {
                learn_jobs.push(LearnJob {
                    service: service.clone(),
                    policy: policy.clone(),
                    learning,
                });
            }
            let lane = lane::start(
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
    let notify = status_changed.clone();
    spawn_background(warming, learn_jobs, activity.clone(), move || {
        notify.notify_one()
    });
    let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<(Link, Incoming)>();
    let mut clients = Vec::new();
    let mut pumps = Vec::new();
    for link in Link::BOTH {
        let (client, eventloop) = connect(&config, &topics, &broker, link)?;
        clients.push(client);
        // Each connection is driven by a task of its own, so that publishing (which waits
        // for room in the client's request channel) never waits on the loop that drains it.
        let pump_task = pump(eventloop, link, incoming_tx.clone(), broker.to_string());
        pumps.push(tokio::spawn(pump_task));
    }
    drop(incoming_tx);
    let started = Instant::now();
    let mut telemetry = tokio::time::interval(Duration::from_secs_f64(config.telemetry_interval_s));
    let mut server = Dispatcher {
        clients: &clients,
        topics: &topics,
        lanes: &lanes,
        config: &config,
        connections: [0; 2],
        outstanding: 0,
        replay: Replay::new(config.answer_cache),
    };
    let device = &clients[Link::Device.index()];
    // Ready once the broker has acknowledged both connections' first subscriptions (so a
    // client that connects right after `start` returns is heard), or after 10 s of trying:
    // the server keeps reconnecting.
    let mut readiness = Readiness::default();
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
            Some((link, event)) = incoming.recv() => match event {
                Incoming::Connected => {
                    server.connections[link.index()] += 1;
                    let subscribes = match subscribe(server.client(link), &topics, &lanes, link).await {
                        Ok(sent) => usize::from(sent),
                        Err(e) => {
                            tracing::warn!("subscribing: {e}");
                            0
                        }
                    };
                    readiness.connected(link, subscribes);
                    if link == Link::Device {
                        publish_status(device, &topics, &lanes, true).await;
                    }
                    if readiness.is_ready() {
                        say_ready(&mut ready);
                    }
                }
                Incoming::Subscribed(codes) => {
                    let refused: Vec<_> = codes
                        .iter()
                        .filter(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                        .collect();
                    if !refused.is_empty() {
                        tracing::error!(
                            "the broker refused {} of the {link:?} session's subscriptions \
                             ({refused:?}): those requests will not reach this device",
                            refused.len()
                        );
                    }
                    readiness.acknowledged(link);
                    if readiness.is_ready() {
                        say_ready(&mut ready);
                    }
                }
                Incoming::Publish(publish) => server.dispatch(*publish, link).await,
                // Before the first connection, a refusal that retrying cannot mend (bad
                // credentials, an untrusted or expired certificate, the wrong host) ends
                // the start with its reason instead of a silent retry loop.
                Incoming::Refused(reason) if ready.is_some() => {
                    let broker = broker.to_string();
                    return Err(BrokerRefused { broker, reason }.into());
                }
                Incoming::Refused(_) => {}
            },
            _ = &mut ready_by, if ready.is_some() => say_ready(&mut ready),
            _ = status_changed.notified() => publish_status(device, &topics, &lanes, true).await,
            Some(answer) = answers.recv() => server.answer_from_worker(answer).await,
            _ = telemetry.tick() => {
                // Dropped rather than waited for while the broker is away.
                let body = telemetry_body(&topics, &lanes, &monitor, started, &server.replay);
                let _ = device.try_publish(topics.telemetry(), QoS::AtMostOnce, false, body);
            }
            _ = &mut shutdown => break,
        }
    }
    // Stop taking requests, answer what is already queued (for a while), then go offline.
    // Whatever is still unanswered stays unacknowledged: a device request is redelivered
    // to this device's session when it returns, a fleet request is retried by its client.
    // Measuring in the background stops at its next sample.
    activity.stop();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        unsubscribe(&clients, &topics, &lanes),
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
        publish_status(device, &topics, &lanes, false).await;
        for client in &clients {
            let _ = client.disconnect().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
    // The pumps stop once their DISCONNECT is out; they are not waited for beyond that.
    let _ = tokio::time::timeout(Duration::from_secs(2), futures_join(pumps)).await;
    if let Some(broker) = embedded {
        broker.stop().await;
    }
    Ok(())
}

/// Waits for every task (their results are of no interest).
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// The broker refused this device for a reason retrying cannot mend (credentials,
/// certificates): starting again with the same settings fails the same way.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the broker {broker}: {reason}")]
pub struct BrokerRefused {
    pub broker: String,
    pub reason: String,
}

/// What a connection's task passes on.
enum Incoming {
    /// (Re)connected: subscribe and announce.
    Connected,
    /// The broker answered a SUBSCRIBE, a reason code per topic filter.
    Subscribed(Vec<SubscribeReasonCode>),
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

/// Drives one MQTT connection: reconnects with backoff, forwards what arrives, and ends
/// after sending a DISCONNECT (polling on would reconnect).
async fn pump(
    mut eventloop: EventLoop,
    link: Link,
    incoming: mpsc::UnboundedSender<(Link, Incoming)>,
    broker: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(
                    "{link:?} session connected to {broker} (session present: {})",
                    ack.session_present
                );
                Incoming::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Incoming::Publish(Box::new(publish)),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Incoming::Subscribed(ack.return_codes),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                if is_refusal(&e)
                    && incoming
                        .send((link, Incoming::Refused(e.to_string())))
                        .is_err()
                {
                    return;
                }
                tracing::warn!(
                    "MQTT connection to {broker} ({link:?} session): {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if incoming.send((link, event)).is_err() {
            return;
        }
    }
}

/// The client of one of the two connections.
fn connect(
    config: &ServeConfig,
    topics: &Topics,
    broker: &BrokerUrl,
    link: Link,
) -> Result<(AsyncClient, EventLoop)> {
    Ok(AsyncClient::new(
        mqtt_options(config, topics, broker, link)?,
        64,
    ))
}

/// The MQTT settings of one of the two connections.
fn mqtt_options(
    config: &ServeConfig,
    topics: &Topics,
    broker: &BrokerUrl,
    link: Link,
) -> Result<MqttOptions> {
    let client_id = match link {
        Link::Device => format!("edgerun-{}", config.device),
        Link::Fleet => format!("edgerun-{}-fleet", config.device),
    };
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if broker.tls {
        let tls = TlsConfiguration::Rustls(config.tls.client_config()?);
        options.set_transport(Transport::tls_with_config(tls));
    }
    options.set_keep_alive(Duration::from_secs(10));
    match link {
        Link::Device => {
            // A persistent session: requests to this device received but not yet answered
            // are redelivered after a reconnect instead of being lost.
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(300));
            let offline = serde_json::to_vec(&json!({"online": false, "device": config.device}))
                .expect("json");
            options.set_last_will(LastWill::new(
                topics.status(),
                offline,
                QoS::AtLeastOnce,
                true,
                None,
            ));
        }
        Link::Fleet => {
            // A session that ends with the connection: brokers keep handing shared-
            // subscription messages to a member's session while it exists (mosquitto does
            // for its whole expiry), so a dead member must have none. What it held
            // unacknowledged is recovered by the client's retry (docs/serving.md).
            options.set_clean_start(true);
            options.set_session_expiry_interval(None);
        }
    }
    options.set_manual_acks(true);
    // At most this many requests in flight to us (every queue full, every worker busy, and
    // room to answer more `busy`); the broker holds back the rest.
    let capacity: usize = config.services.values().map(|s| s.queue + s.workers).sum();
    options.set_receive_maximum(Some((capacity * 2).clamp(16, 1024) as u16));
    // Our own publishes (answers, status, telemetry) awaiting the broker's ack. rumqttc
    // allocates a slot per possible packet id up front, 216 bytes each: left unset, that
    // is u16::MAX of them, 13.5 MiB per session, 27 MiB of a device's 45 MiB at idle.
    options.set_outgoing_inflight_upper_limit(OUTGOING_IN_FLIGHT);
    // Big enough for any payload we answer `too_large` rather than never seeing.
    options.set_max_packet_size(Some((config.max_payload_bytes * 2 + 65_536) as u32));
    if let Some(credentials) = config.credentials()? {
        options.set_credentials(credentials.username, credentials.password);
    }
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    Ok(options)
}

/// Subscribes `link` to what it serves, this device's request topics or the fleet's, in
/// one SUBSCRIBE; `false` when there is nothing to subscribe to (no services in a fleet).
async fn subscribe(
    client: &AsyncClient,
    topics: &Topics,
    lanes: &BTreeMap<String, Lane<Receipt>>,
    link: Link,
) -> Result<bool> {
    let filters: Vec<String> = match link {
        Link::Device => vec![topics.device_requests()],
        Link::Fleet => lanes
            .keys()
            .map(|name| topics.fleet_subscription(name))
            .collect(),
    };
    if filters.is_empty() {
        return Ok(false);
    }
    let filters = filters
        .into_iter()
        .map(|filter| Filter::new(filter, QoS::AtLeastOnce));
    client.subscribe_many(filters).await?;
    Ok(true)
}

async fn unsubscribe(
    clients: &[AsyncClient],
    topics: &Topics,
    lanes: &BTreeMap<String, Lane<Receipt>>,
) {
    let _ = clients[Link::Device.index()]
        .unsubscribe(topics.device_requests())
        .await;
    for name in lanes.keys() {
        let _ = clients[Link::Fleet.index()]
            .unsubscribe(topics.fleet_subscription(name))
            .await;
    }
}

/// Publishes the retained status; a failure is logged (the last will still covers us).
async fn publish_status(
    client: &AsyncClient,
    topics: &Topics,
    lanes: &BTreeMap<String, Lane<Receipt>>,
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

fn telemetry_body(
    topics: &Topics,
    lanes: &BTreeMap<String, Lane<Receipt>>,
    monitor: &Monitor,
    started: Instant,
    replay: &Replay<Sent, Waiting>,
) -> Vec<u8> {
    let services: serde_json::Map<String, Value> = lanes
        .iter()
        .map(|(name, lane)| {
            let mut stats = lane.stats.snapshot();
            stats["policy"] = lane.policy.state();
            (name.clone(), stats)
        })
        .collect();
    let (entries, bytes) = replay.usage();
    let limits = replay.limits();
    let body = json!({
        "topic": topics.telemetry(),
        "uptime_s": started.elapsed().as_secs_f64(),
        "device": *monitor.latest(),
        "services": services,
        "answer_cache": {
            "entries": entries,
            "bytes": bytes,
            "max_entries": limits.entries,
            "max_bytes": limits.bytes,
        },
    });
    serde_json::to_vec(&body).expect("json")
}

/// Whether an answer may be sent again to a copy of its request instead of computing it
/// again: not when it only says the request could not be served this time.
fn is_replayable(body: &Output) -> bool {
    let Output::Json(json) = body else {
        return true;
    };
    let code = json.pointer("/error/code").and_then(Value::as_str);
    !matches!(code, Some("busy" | "expired" | "internal"))
}

/// The MQTT task's view of the server: where requests go and how answers leave.
struct Dispatcher<'a> {
    /// The device's and the fleet's client, by [`Link::index`].
    clients: &'a [AsyncClient],
    topics: &'a Topics,
    lanes: &'a BTreeMap<String, Lane<Receipt>>,
    config: &'a ServeConfig,
    /// Counts each link's connections; an acknowledgement only goes out on the connection
    /// its request came in on.
    connections: [u64; 2],
    /// Requests handed to workers and not answered yet.
    outstanding: usize,
    replay: Replay<Sent, Waiting>,
}

impl Dispatcher<'_> {
    fn client(&self, link: Link) -> &AsyncClient {
        &self.clients[link.index()]
    }

    /// Takes one PUBLISH: answers at once what cannot be queued or was answered before,
    /// queues the rest.
    async fn dispatch(&mut self, publish: Publish, link: Link) {
        let origin = Origin {
            link,
            connection: self.connections[link.index()],
        };
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let Some(name) = self.topics.service_of(&topic) else {
            tracing::warn!("message on unexpected topic {topic:?} ignored");
            self.ack(&publish, origin).await;
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
            return self.ack(&publish, origin).await;
        }
        if request.reply.is_none() {
            refuse("has no valid response topic or reply_to");
            return self.ack(&publish, origin).await;
        }
        let error = |code, message: String| Answer {
            body: error_body(&ServiceError::new(code, message)),
            request: request.clone(),
            receipt: Receipt {
                publish: publish.clone(),
                origin,
                key: None,
            },
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
        let key = RequestKey::of(&request);
        if let Some(key) = &key {
            match self.replay.admit(key, (publish.clone(), origin)) {
                Admission::New => {}
                Admission::Replay(sent) => {
                    // Its client may have missed the first answer: it is sent again.
                    lane.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    lane.stats.answered.fetch_add(1, Ordering::Relaxed);
                    self.publish_answer(&request, sent, link).await;
                    return self.ack(&publish, origin).await;
                }
                // The original's answer, on the same reply topic with the same correlation,
                // answers the copy too; the copy is acknowledged once it is out.
                Admission::Joined => {
                    lane.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Admission::Surplus((publish, origin)) => {
                    lane.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    return self.ack(&publish, origin).await;
                }
            }
        }
        lane.stats.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            request,
            receipt: Receipt {
                publish,
                origin,
                key,
            },
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
                    receipt: job.receipt,
                })
                .await;
            }
        }
    }

    async fn answer_from_worker(&mut self, answer: Answer<Receipt>) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.answer(answer).await;
    }

    /// Publishes the answer, then acknowledges the request it answers and any copies that
    /// waited for it; keeps it for copies still to come.
    async fn answer(&mut self, mut answer: Answer<Receipt>) {
        let request = &answer.request;
        let Receipt {
            publish,
            origin,
            key,
        } = answer.receipt;
        if let Some(lane) = self.lanes.get(&request.service) {
            lane.stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        let replayable = is_replayable(&answer.body);
        if let Value::Object(map) = answer.body.json_mut() {
            // In a fleet, which device answered.
            map.insert("device".into(), Value::String(self.config.device.clone()));
        }
        let sent = request.reply.as_ref().map(|reply| {
            let (payload, properties) = reply.encode(answer.body);
            Sent {
                payload: Bytes::from(payload),
                properties,
            }
        });
        if let Some(sent) = &sent {
            self.publish_answer(request, sent.clone(), origin.link)
                .await;
        }
        self.ack(&publish, origin).await;
        if let Some(key) = key {
            let kept = sent.filter(|_| replayable).map(|sent| {
                let size = sent.bytes();
                (sent, size)
            });
            for (copy, origin) in self.replay.complete(&key, kept) {
                self.ack(&copy, origin).await;
            }
        }
    }

    /// Publishes an answer to `request`'s reply topic, on the link the request came in on.
    async fn publish_answer(&self, request: &Request, sent: Sent, link: Link) {
        let Some(reply) = &request.reply else {
            return;
        };
        let published = self
            .client(link)
            .publish_with_properties(
                reply.topic.clone(),
                QoS::AtLeastOnce,
                false,
                sent.payload,
                sent.properties,
            )
            .await;
        if let Err(e) = published {
            tracing::warn!("answering on {:?}: {e}", reply.topic);
        }
    }

    /// Acknowledges a request that came in on `origin`. On a later connection its packet
    /// id may name another request; the broker redelivers it instead (a resumed session)
    /// or has forgotten it (a new one), so no acknowledgement is sent.
    async fn ack(&self, publish: &Publish, origin: Origin) {
        if origin.connection != self.connections[origin.link.index()] {
            return;
        }
        if let Err(e) = self.client(origin.link).ack(publish).await {
            tracing::warn!("acknowledging a request: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_both_sessions_have_their_subscriptions_acknowledged() {
        let mut readiness = Readiness::default();
        readiness.connected(Link::Device, 1);
        readiness.connected(Link::Fleet, 1);
        assert!(!readiness.is_ready(), "subscribed, not yet acknowledged");
        readiness.acknowledged(Link::Device);
        assert!(!readiness.is_ready(), "the fleet's still awaited");
        // A reconnect before the acknowledgement subscribes again: only that one counts.
        readiness.connected(Link::Fleet, 1);
        readiness.acknowledged(Link::Fleet);
        assert!(readiness.is_ready());

        // A session with nothing to subscribe to waits for the other one alone.
        let mut readiness = Readiness::default();
        readiness.connected(Link::Fleet, 0);
        assert!(!readiness.is_ready(), "the device session is not up");
        readiness.connected(Link::Device, 1);
        assert!(!readiness.is_ready());
        readiness.acknowledged(Link::Device);
        assert!(readiness.is_ready());
    }

    #[test]
    fn both_sessions_bound_their_unacknowledged_publishes() {
        // Unbounded, rumqttc allocates 65 536 packet slots per session up front (13.5 MiB).
        let config = ServeConfig::default();
        let topics = Topics::new(&config.prefix, &config.device);
        let broker = BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap();
        for link in [Link::Device, Link::Fleet] {
            let options = mqtt_options(&config, &topics, &broker, link).unwrap();
            assert_eq!(options.get_outgoing_inflight_upper_limit(), Some(1024));
        }
    }

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
