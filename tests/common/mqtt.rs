//! MQTT helpers for the serving tests: a server on a free port, a mosquitto broker started
//! by the test, and a v5 client that sends requests and collects answers.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use edgerun::mqtt::client::RequestClient;
use edgerun::serve::{self, ServeConfig, ServerHandle, ServiceConfig};
use edgerun::services::Service;
use edgerun::services::ocr::{OcrOptions, OcrService};
use serde_json::Value;

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
    Arc::new(OcrService::new(
        super::ocr().clone(),
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
    config.services.insert(
        "ocr".into(),
        ServiceConfig {
            queue,
            workers: 1,
            ..Default::default()
        },
    );
    config
}

pub fn start(config: ServeConfig) -> ServerHandle {
    serve::start(config, vec![ocr_service()], Default::default()).expect("server starts")
}

/// mosquitto on a loopback port (the library's, shared with `edgerun bench mqtt`).
pub struct Mosquitto(edgerun::bench::mqtt::Mosquitto);

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto(edgerun::bench::mqtt::Mosquitto::start().expect("mosquitto starts"))
    }

    pub fn start_on(port: u16) -> Mosquitto {
        Mosquitto(edgerun::bench::mqtt::Mosquitto::start_on(port).expect("mosquitto starts"))
    }

    /// With `extra` configuration lines.
    pub fn with_extra(extra: &str) -> Mosquitto {
        Mosquitto(edgerun::bench::mqtt::Mosquitto::with_extra(extra).expect("mosquitto starts"))
    }

    /// Admitting only `users` (name, password).
    pub fn with_users(users: &[(&str, &str)]) -> Mosquitto {
        Mosquitto(edgerun::bench::mqtt::Mosquitto::with_users(users).expect("mosquitto starts"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// The library's requesting client, with the collecting the tests need.
pub struct Client {
    inner: RequestClient,
}

impl Client {
    pub async fn connect(addr: SocketAddr, name: &str) -> Client {
        Client {
            inner: RequestClient::connect(addr, name)
                .await
                .expect("client connects"),
        }
    }

    pub fn raw(&self) -> &rumqttc::v5::AsyncClient {
        self.inner.raw()
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
        self.inner
            .send(topic, id, payload, content_type, expiry_s)
            .await
            .expect("request sent");
    }

    /// The next answer (correlation id, body), or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, Value)> {
        self.inner.next_answer(timeout).await
    }

    /// Waits for `count` answers (or the timeout) and returns them by correlation id, with
    /// how often each id was answered.
    pub async fn collect(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> HashMap<String, (usize, Value)> {
        let mut got: HashMap<String, (usize, Value)> = HashMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        for _ in 0..count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((id, body)) = self.inner.next_answer(left).await else {
                break;
            };
            let entry = got.entry(id).or_insert((0, Value::Null));
            entry.0 += 1;
            entry.1 = body;
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
        let id = format!("q{}", next_id());
        self.send(topic, &id, payload, content_type, None).await;
        let mut got = self.collect(1, Duration::from_secs(30)).await;
        got.remove(&id)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no answer to {id} on {topic}"))
    }
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `base` (a JSON object) with `extra`'s fields added, as a request payload.
pub fn with_fields(mut base: Value, extra: Value) -> Vec<u8> {
    if let (Value::Object(map), Value::Object(more)) = (&mut base, extra) {
        map.extend(more);
    }
    serde_json::to_vec(&base).expect("JSON serialises")
}

/// A server for `service` alone on the embedded broker, adaptive over `points` (name,
/// quality, p50 ms) with `slo_ms`, sampling telemetry from `clock`'s tree. The profile is
/// meant in seconds against real runs of milliseconds, so the controller barely learns
/// from them (`ewma_alpha` 1e-9): what it does follows the scripted clock alone. It steps
/// up after a window of 1 s.
pub fn adaptive_server(
    device: &str,
    service: Arc<dyn Service>,
    clock: &super::ScriptedClock,
    points: &[(&str, f64, f64)],
    slo_ms: f64,
) -> ServerHandle {
    use edgerun::policy::{Controller, Planning, PolicyConfig, ProfiledPoint};
    use edgerun::serve::PointChoice;
    let name = service.name().to_string();
    let mut cfg = config(device, None, 16);
    cfg.services.insert(name.clone(), ServiceConfig::default());
    cfg.telemetry_root = clock.root().to_path_buf();
    let profiled = points
        .iter()
        .map(|&(name, quality, p50)| ProfiledPoint::new(name, quality, p50, p50))
        .collect();
    let policy = PolicyConfig {
        slo_ms,
        up_window_s: 1.0,
        ewma_alpha: 1e-9,
        ..PolicyConfig::default()
    };
    let planning = Planning::for_service(service.meets_deadlines());
    let controller =
        Controller::new(policy, profiled, planning, std::time::Instant::now()).unwrap();
    let choices = [(name, PointChoice::Adaptive(Box::new(controller)))].into();
    serve::start(cfg, vec![service], choices).expect("server starts")
}

/// Asks (ordinary requests, 100 ms apart) until the answer's point is no longer `from`
/// (telemetry is sampled every 500 ms); that answer, and how long it took.
pub async fn until_moved(
    ask: &mut impl AsyncFnMut(Value) -> Value,
    from: &str,
) -> (Value, Duration) {
    let started = std::time::Instant::now();
    loop {
        let answer = ask(serde_json::json!({})).await;
        if answer["point"] != from {
            return (answer, started.elapsed());
        }
        assert!(started.elapsed().as_secs() < 20, "never moved from {from}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next message on `topic` that `accept` takes (a retained one at once), read with
/// `mosquitto_sub`; panics after 60 s with the last one seen.
pub async fn wait_retained(
    addr: SocketAddr,
    topic: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while std::time::Instant::now() < deadline {
        let output = tokio::task::spawn_blocking({
            let topic = topic.to_string();
            move || {
                std::process::Command::new("mosquitto_sub")
                    .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
                    .args(["-t", &topic, "-V", "mqttv5", "-C", "1", "-W", "2"])
                    .stderr(std::process::Stdio::null())
                    .output()
                    .expect("mosquitto_sub is installed")
            }
        })
        .await
        .unwrap();
        seen = String::from_utf8_lossy(&output.stdout).into_owned();
        if let Some(value) = seen
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| accept(v))
        {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no accepted message on {topic}; last seen: {seen}")
}

/// An `edgerun serve` process on `broker` serving `services`, killed (SIGKILL) when
/// dropped.
pub struct ServeProcess(std::process::Child);

impl ServeProcess {
    pub fn start(broker: SocketAddr, device: &str, services: &str) -> ServeProcess {
        ServeProcess::start_with(broker, device, services, &[])
    }

    /// With more `serve` flags.
    pub fn start_with(
        broker: SocketAddr,
        device: &str,
        services: &str,
        flags: &[&str],
    ) -> ServeProcess {
        ServeProcess(
            super::edgerun_command()
                .args(["serve", "--broker", &format!("mqtt://{broker}")])
                .args(["--device", device, "--queue", "64", "--services", services])
                // Fleet behaviour only: no measuring in the background.
                .arg("--no-adapt")
                .args(flags)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
