//! `edgerun serve`: answer inference requests over MQTT, alone or in a fleet.
//!
//! One async task owns the MQTT connection: it takes requests off the wire, hands them to
//! each service's bounded queue (answering `busy` at once when it is full), publishes the
//! answers the worker threads send back, and only then acknowledges the request, so a
//! crash or disconnect means redelivery rather than loss. Inference never runs on the async
//! threads. This module wires transport, queues and services together; it computes nothing
//! itself.

pub mod config;
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub use self::config::{ServeConfig, ServiceConfig};
use self::stats::ServiceStats;
use crate::mqtt::envelope::Request;
use crate::mqtt::{EmbeddedBroker, Topics};
use crate::services::{Service, ServiceError};

/// A request waiting for a worker, with the PUBLISH to acknowledge once it is answered.
struct Job {
    request: Request,
    publish: Publish,
}

/// An answer on its way back to the MQTT task.
struct Answer {
    request: Request,
    publish: Publish,
    body: Value,
}

/// One service with its queue and statistics.
struct Lane {
    service: Arc<dyn Service>,
    queue: SyncSender<Job>,
    stats: Arc<ServiceStats>,
}

/// A running server; dropping it does not stop it, [`ServerHandle::shutdown`] does.
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
/// embedded broker (if any) listens and the client is started.
pub fn start(config: ServeConfig, services: Vec<Arc<dyn Service>>) -> Result<ServerHandle> {
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
        .spawn(move || runtime.block_on(serve(config, services, shutdown_rx, ready_tx)))?;
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
    mut shutdown: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Option<SocketAddr>>,
) -> Result<()> {
    let (embedded, host, port) = match config.broker_address()? {
        Some((host, port)) => (None, host, port),
        None => {
            let broker =
                EmbeddedBroker::start(config.embedded_bind, config.max_payload_bytes * 2 + 65_536)
                    .await?;
            let addr = broker.local_addr();
            (Some(broker), addr.ip().to_string(), addr.port())
        }
    };
    let topics = Topics::new(&config.prefix, &config.device);
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    let lanes: BTreeMap<String, Lane> = services
        .into_iter()
        .filter_map(|service| {
            let settings = config.services.get(service.name())?.clone();
            Some((
                service.name().to_string(),
                start_lane(service, &settings, answers_tx.clone()),
            ))
        })
        .collect();
    let (client, eventloop) = connect(&config, &topics, &host, port);
    let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<Incoming>();
    // The connection is driven by a task of its own, so that publishing (which waits for
    // room in the client's request channel) never waits on the loop that would drain it.
    let pump = tokio::spawn(pump(eventloop, incoming_tx, format!("{host}:{port}")));
    let _ = ready.send(embedded.as_ref().map(EmbeddedBroker::local_addr));
    let started = Instant::now();
    let mut telemetry = tokio::time::interval(Duration::from_secs_f64(config.telemetry_interval_s));
    loop {
        tokio::select! {
            Some(event) = incoming.recv() => match event {
                Incoming::Connected => {
                    subscribe(&client, &topics, &lanes).await?;
                    publish_status(&client, &topics, &lanes, true).await?;
                }
                Incoming::Publish(publish) => {
                    dispatch(&client, &topics, &lanes, &config, *publish).await?;
                }
            },
            Some(answer) = answers.recv() => {
                let lane = lanes.get(&answer.request.service);
                answer_now(&client, &config.device, lane, answer).await?;
            }
            _ = telemetry.tick() => {
                let body = telemetry_body(&topics, &lanes, started);
                client.publish(topics.telemetry(), QoS::AtMostOnce, false, body).await?;
            }
            _ = &mut shutdown => break,
        }
    }
    // Offline status, then DISCONNECT; the pump stops once the DISCONNECT is out.
    if publish_status(&client, &topics, &lanes, false)
        .await
        .is_ok()
    {
        let _ = client.disconnect().await;
    }
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
    host: &str,
    port: u16,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(format!("edgerun-{}", config.device), host, port);
    options.set_keep_alive(Duration::from_secs(10));
    // A persistent session: requests received but not yet answered are redelivered after
    // a reconnect instead of being lost.
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    options.set_manual_acks(true);
    // At most this many requests in flight to us; the broker holds back the rest.
    options.set_receive_maximum(Some(256));
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
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options.set_credentials(user, password);
    }
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    AsyncClient::new(options, 64)
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

async fn publish_status(
    client: &AsyncClient,
    topics: &Topics,
    lanes: &BTreeMap<String, Lane>,
    online: bool,
) -> Result<()> {
    let services: serde_json::Map<String, Value> = lanes
        .iter()
        .map(|(name, lane)| (name.clone(), lane.service.describe()))
        .collect();
    let body = json!({
        "online": online,
        "version": env!("CARGO_PKG_VERSION"),
        "services": services,
        "request_topics": lanes.keys().map(|n| topics.device_request(n)).collect::<Vec<_>>(),
    });
    client
        .publish(
            topics.status(),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&body)?,
        )
        .await?;
    Ok(())
}

fn telemetry_body(topics: &Topics, lanes: &BTreeMap<String, Lane>, started: Instant) -> Vec<u8> {
    let services: serde_json::Map<String, Value> = lanes
        .iter()
        .map(|(name, lane)| (name.clone(), lane.stats.snapshot()))
        .collect();
    let body = json!({
        "topic": topics.telemetry(),
        "uptime_s": started.elapsed().as_secs_f64(),
        "services": services,
    });
    serde_json::to_vec(&body).expect("json")
}

/// Takes one PUBLISH: answers at once what cannot be queued, queues the rest.
async fn dispatch(
    client: &AsyncClient,
    topics: &Topics,
    lanes: &BTreeMap<String, Lane>,
    config: &ServeConfig,
    publish: Publish,
) -> Result<()> {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let Some(name) = topics.service_of(&topic) else {
        tracing::warn!("message on unexpected topic {topic:?} ignored");
        client.ack(&publish).await?;
        return Ok(());
    };
    let request = Request::from_publish(name, &publish, Instant::now());
    let Some(lane) = lanes.get(name) else {
        let error = ServiceError::new("unknown_service", format!("no service {name:?} here"));
        return answer_now(
            client,
            &config.device,
            None,
            Answer {
                request,
                publish,
                body: error_body(&error),
            },
        )
        .await;
    };
    lane.stats.requests.fetch_add(1, Ordering::Relaxed);
    if request.reply.is_none() {
        // Nobody to answer: counted and logged, not silently dropped.
        tracing::warn!("request on {topic} has no response topic or reply_to; dropped");
        lane.stats.errors.fetch_add(1, Ordering::Relaxed);
        client.ack(&publish).await?;
        return Ok(());
    }
    if publish.payload.len() > config.max_payload_bytes {
        let error = ServiceError::new(
            "too_large",
            format!(
                "payload of {} bytes is above the limit of {}",
                publish.payload.len(),
                config.max_payload_bytes
            ),
        );
        lane.stats.errors.fetch_add(1, Ordering::Relaxed);
        return answer_now(
            client,
            &config.device,
            Some(lane),
            Answer {
                request,
                publish,
                body: error_body(&error),
            },
        )
        .await;
    }
    lane.stats.queued.fetch_add(1, Ordering::Relaxed);
    match lane.queue.try_send(Job { request, publish }) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            lane.stats.queued.fetch_sub(1, Ordering::Relaxed);
            lane.stats.busy.fetch_add(1, Ordering::Relaxed);
            let error = ServiceError::new("busy", "the service's queue is full; retry later");
            answer_now(
                client,
                &config.device,
                Some(lane),
                Answer {
                    request: job.request,
                    publish: job.publish,
                    body: error_body(&error),
                },
            )
            .await
        }
    }
}

/// Answers from the MQTT task itself (errors found before queueing).
async fn answer_now(
    client: &AsyncClient,
    device: &str,
    lane: Option<&Lane>,
    answer: Answer,
) -> Result<()> {
    if let Some(lane) = lane {
        lane.stats.answered.fetch_add(1, Ordering::Relaxed);
    }
    publish_answer(client, device, answer).await
}

/// Publishes the answer, then acknowledges the request it answers.
async fn publish_answer(client: &AsyncClient, device: &str, mut answer: Answer) -> Result<()> {
    if let Value::Object(map) = &mut answer.body {
        // In a fleet, which device answered.
        map.insert("device".into(), Value::String(device.to_string()));
    }
    if let Some(reply) = &answer.request.reply {
        client
            .publish_with_properties(
                reply.topic.clone(),
                QoS::AtLeastOnce,
                false,
                reply.body(answer.body),
                reply.properties(),
            )
            .await?;
    }
    client.ack(&answer.publish).await?;
    Ok(())
}

fn error_body(error: &ServiceError) -> Value {
    json!({"error": {"code": error.code, "message": error.message}})
}

/// Starts a service's worker threads behind a queue of `settings.queue` requests.
fn start_lane(
    service: Arc<dyn Service>,
    settings: &ServiceConfig,
    answers: mpsc::UnboundedSender<Answer>,
) -> Lane {
    let (queue, jobs) = sync_channel::<Job>(settings.queue);
    let jobs = Arc::new(Mutex::new(jobs));
    let stats = Arc::new(ServiceStats::default());
    for index in 0..settings.workers {
        let (service, jobs, stats, answers) = (
            service.clone(),
            jobs.clone(),
            stats.clone(),
            answers.clone(),
        );
        std::thread::Builder::new()
            .name(format!("{}-worker-{index}", service.name()))
            .spawn(move || work(service.as_ref(), &jobs, &stats, &answers))
            .expect("spawning a worker thread");
    }
    Lane {
        service,
        queue,
        stats,
    }
}

/// A worker: takes jobs until the queue closes, answers each one exactly once.
fn work(
    service: &dyn Service,
    jobs: &Mutex<Receiver<Job>>,
    stats: &ServiceStats,
    answers: &mpsc::UnboundedSender<Answer>,
) {
    loop {
        let job = match jobs.lock().expect("queue lock poisoned").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let Job { request, publish } = job;
        let body = if request.is_expired(Instant::now()) {
            stats.expired.fetch_add(1, Ordering::Relaxed);
            error_body(&ServiceError::new(
                "expired",
                "the request's message expiry passed while it waited",
            ))
        } else {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                service.handle(request.content_type.as_deref(), &request.body)
            }))
            .unwrap_or_else(|_| Err(ServiceError::new("internal", "the service panicked")));
            stats.record_latency(request.received_at.elapsed().as_secs_f64() * 1e3);
            match result {
                Ok(body) => body,
                Err(error) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    error_body(&error)
                }
            }
        };
        if answers
            .send(Answer {
                request,
                publish,
                body,
            })
            .is_err()
        {
            return; // the server is shutting down; unacknowledged requests are redelivered
        }
    }
}
