//! MQTT helpers for the serving tests: a server on a free port, a mosquitto broker started
//! by the test, and a v5 client that sends requests and collects answers.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgerun::serve::{self, ServeConfig, ServerHandle, ServiceConfig};
use edgerun::services::Service;
use edgerun::services::ocr::{OcrOptions, OcrService};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;

/// Serving tests run one at a time: each starts servers with their own inference threads,
/// and on a 2-core machine running them together makes every timeout a guess.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A free TCP port on loopback (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The OCR service over the shared test pipeline.
pub fn ocr_service() -> Arc<dyn Service> {
    static PIPELINE: std::sync::OnceLock<Arc<edgerun::services::ocr::OcrPipeline>> =
        std::sync::OnceLock::new();
    let pipeline = PIPELINE.get_or_init(|| {
        let dir = edgerun::models::ModelDir::open(&edgerun::models::default_root(), "ocr").unwrap();
        let engine = edgerun::engine::TractEngine::new(Default::default());
        Arc::new(edgerun::services::ocr::OcrPipeline::load(&engine, &dir).unwrap())
    });
    Arc::new(OcrService::new(
        pipeline.clone(),
        OcrOptions::default(),
        edgerun::imaging::DEFAULT_MAX_PIXELS,
    ))
}

/// A server configuration for tests: embedded broker on a free port unless `broker` is set.
pub fn config(device: &str, broker: Option<SocketAddr>, queue: usize) -> ServeConfig {
    let mut config = ServeConfig {
        device: device.into(),
        embedded_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker: broker.map(|a| format!("mqtt://{a}")),
        telemetry_interval_s: 0.5,
        ..ServeConfig::default()
    };
    config
        .services
        .insert("ocr".into(), ServiceConfig { queue, workers: 1 });
    config
}

pub fn start(config: ServeConfig) -> ServerHandle {
    serve::start(config, vec![ocr_service()]).expect("server starts")
}

/// A mosquitto broker on a free loopback port, stopped when dropped.
pub struct Mosquitto {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"),
        )
        .unwrap();
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto; .ci/run does)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Mosquitto {
                    addr,
                    child,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto did not start on {addr}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test client: every answer arrives on `answers`, keyed by correlation data.
pub struct Client {
    pub client: AsyncClient,
    answers: mpsc::UnboundedReceiver<(String, Option<Bytes>, Value)>,
    pub reply_topic: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, name: &str) -> Client {
        let mut options = MqttOptions::new(name, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(Some(64 << 20));
        let (client, mut eventloop) = AsyncClient::new(options, 4096);
        let reply_topic = format!("test/{name}/replies");
        let (tx, answers) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let correlation = p.properties.and_then(|p| p.correlation_data);
                        let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if tx.send((topic, correlation, body)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe(format!("{reply_topic}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("subscribed")
            .unwrap();
        Client {
            client,
            answers,
            reply_topic,
        }
    }

    /// Sends a request with a response topic and correlation data `id`.
    pub async fn send(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        content_type: Option<&str>,
        expiry_s: Option<u32>,
    ) {
        let properties = PublishProperties {
            response_topic: Some(format!("{}/x", self.reply_topic)),
            correlation_data: Some(Bytes::from(id.to_string())),
            content_type: content_type.map(str::to_string),
            message_expiry_interval: expiry_s,
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
            .unwrap();
    }

    /// Waits for `count` answers (or the timeout) and returns them by correlation id, with
    /// a count of how often each id was answered.
    pub async fn collect(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> HashMap<String, (usize, Value)> {
        let mut got: HashMap<String, (usize, Value)> = HashMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut total = 0;
        while total < count {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some((_, correlation, body))) => {
                    let id = correlation
                        .map(|c| String::from_utf8_lossy(&c).into_owned())
                        .unwrap_or_default();
                    let entry = got.entry(id).or_insert((0, Value::Null));
                    entry.0 += 1;
                    entry.1 = body;
                    total += 1;
                }
                _ => break,
            }
        }
        got
    }

    /// One request, one answer.
    pub async fn ask(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        content_type: Option<&str>,
    ) -> Value {
        let id = format!("q{}", rand_id());
        self.send(topic, &id, payload, content_type, None).await;
        let mut got = self.collect(1, Duration::from_secs(30)).await;
        got.remove(&id)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no answer to {id} on {topic}"))
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
