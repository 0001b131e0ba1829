//! `edgerun serve` against real brokers: the embedded one and Debian's mosquitto.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::fixture;
use common::mqtt::{
    Client, Mosquitto, config, exclusive, free_port, start, wait_retained, with_fields,
};
use serde_json::{Value, json};

fn sign_png() -> Vec<u8> {
    std::fs::read(fixture("sign.png")).unwrap()
}

fn word_png() -> Vec<u8> {
    std::fs::read(fixture("sign_word.png")).unwrap()
}

fn texts(answer: &Value) -> Vec<&str> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {answer}"))
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_answers_v5_requests_with_correlation() {
    let _serial = exclusive().await;
    let server = start(config("dev-a", None, 16));
    let addr = server.embedded_broker.unwrap();
    let mut client = Client::connect(addr, "v5").await;
    let answer = client
        .ask("edgerun/dev-a/ocr/request", sign_png(), Some("image/png"))
        .await;
    assert_eq!(texts(&answer), ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
    assert_eq!(answer["point"], "cascade0.9@960");
    assert_eq!(answer["device"], "dev-a");
    assert!(answer["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    // JSON with parameters, to the fleet topic (a shared subscription).
    let b64 = base64::engine::general_purpose::STANDARD.encode(word_png());
    let request = json!({"image_b64": b64, "crops": true, "rec": "small", "deadline_ms": 100});
    let answer = client
        .ask(
            "edgerun/fleet/ocr/request",
            serde_json::to_vec(&request).unwrap(),
            Some("application/json"),
        )
        .await;
    assert_eq!(
        (answer["text"].as_str(), answer["recognizer"].as_str()),
        (Some("Station"), Some("small"))
    );
    assert_eq!(
        answer["point"], "custom",
        "explicit knobs are no declared point"
    );
    // No controller here: the answer says its deadline was not planned for.
    assert_eq!(answer["policy"]["adaptive"], false);
    assert_eq!(answer["policy"]["why"], "no controller configured");
    // Held at its default, the server planned no other point ahead; a request that pins
    // one is served at it, its models planned by that request.
    let b64 = base64::engine::general_purpose::STANDARD.encode(sign_png());
    let request = json!({"image_b64": b64, "point": "det_small/small@960"});
    let answer = client
        .ask(
            "edgerun/dev-a/ocr/request",
            serde_json::to_vec(&request).unwrap(),
            Some("application/json"),
        )
        .await;
    assert_eq!(answer["point"], "det_small/small@960", "{answer}");
    assert_eq!(texts(&answer), ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_311_clients_use_reply_to_and_id() {
    let _serial = exclusive().await;
    let server = start(config("dev-b", None, 16));
    let addr = server.embedded_broker.unwrap();
    let mut options = rumqttc::MqttOptions::new("v311", addr.ip().to_string(), addr.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    client
        .subscribe("legacy/replies", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(word_png());
    let mut sent = false;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match eventloop.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !sent => {
                    sent = true;
                    let request = json!({"image_b64": b64, "crops": true, "reply_to": "legacy/replies", "id": "abc-1"});
                    client
                        .publish("edgerun/dev-b/ocr/request", rumqttc::QoS::AtLeastOnce, false, serde_json::to_vec(&request).unwrap())
                        .await
                        .unwrap();
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    return serde_json::from_slice::<Value>(&p.payload).unwrap();
                }
                _ => {}
            }
        }
    })
    .await
    .expect("an answer");
    assert_eq!(answer["id"], "abc-1");
    assert_eq!(answer["text"], "Station");
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_right_error_and_serving_goes_on() {
    let _serial = exclusive().await;
    let mut cfg = config("dev-c", None, 16);
    cfg.max_payload_bytes = 1 << 20;
    let server = start(cfg);
    let mut client = Client::connect(server.embedded_broker.unwrap(), "bad").await;
    let topic = "edgerun/dev-c/ocr/request";
    let png = sign_png();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("bad_request", vec![], Some("image/png")),
        (
            "bad_request",
            png[..png.len() / 3].to_vec(),
            Some("image/png"),
        ),
        ("unsupported_media", b"hello".to_vec(), Some("text/plain")),
        ("unsupported_media", b"GIF89a....".to_vec(), None),
        (
            "bad_request",
            b"{\"image_b64\": ".to_vec(),
            Some("application/json"),
        ),
        (
            "bad_request",
            br#"{"image": "wrong field"}"#.to_vec(),
            Some("application/json"),
        ),
        ("bad_request", br#"{"image_b64": "%%%"}"#.to_vec(), None),
        (
            "bad_request",
            br#"{"image_b64": "", "threshold": "high"}"#.to_vec(),
            None,
        ),
        ("too_large", vec![0u8; (1 << 20) + 1], Some("image/png")),
    ];
    for (expected, payload, content_type) in cases {
        let answer = client.ask(topic, payload, content_type).await;
        assert_eq!(answer["error"]["code"], expected, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // A header claiming 20000 x 20000 pixels.
    let huge = common::png_header(20_000, 20_000);
    assert_eq!(
        client.ask(topic, huge, Some("image/png")).await["error"]["code"],
        "too_large"
    );
    // Unknown service.
    let answer = client
        .ask("edgerun/dev-c/nothing/request", vec![1], None)
        .await;
    assert_eq!(answer["error"]["code"], "unknown_service");
    // And it still serves.
    let answer = client.ask(topic, sign_png(), Some("image/png")).await;
    assert_eq!(texts(&answer).len(), 3);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_gets_exactly_one_answer_each() {
    let _serial = exclusive().await;
    let server = start(config("dev-d", None, 16));
    let mut client = Client::connect(server.embedded_broker.unwrap(), "burst").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(word_png());
    let request =
        serde_json::to_vec(&json!({"image_b64": b64, "crops": true, "rec": "tiny"})).unwrap();
    for i in 0..2000 {
        client
            .send(
                "edgerun/dev-d/ocr/request",
                &format!("b{i}"),
                request.clone(),
                None,
                None,
            )
            .await;
    }
    let answers = client.collect(2000, Duration::from_secs(300)).await;
    assert_eq!(answers.len(), 2000, "every request answered");
    assert!(answers.values().all(|(n, _)| *n == 1), "exactly once");
    let (mut ok, mut busy) = (0, 0);
    for (_, body) in answers.values() {
        match body["error"]["code"].as_str() {
            None => {
                assert_eq!(body["text"], "Station");
                ok += 1;
            }
            Some("busy") => busy += 1,
            Some(other) => panic!("unexpected error {other}: {body}"),
        }
    }
    assert_eq!(ok + busy, 2000);
    assert!(ok >= 17 && busy > 0, "ok {ok}, busy {busy}");
    server.shutdown().unwrap();
}

/// A service that holds each request until the test lets it go.
struct Gate(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl edgerun::services::Service for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }

    fn answer(
        &self,
        _: Option<&str>,
        _: &edgerun::services::Payload,
        _: edgerun::services::Serving<'_>,
    ) -> Result<edgerun::services::Handled, edgerun::services::ServiceError> {
        let _ = self.0.lock().unwrap().recv_timeout(Duration::from_secs(30));
        Ok(edgerun::services::Handled {
            output: edgerun::services::Output::Json(json!({"passed": true})),
            served: Default::default(),
        })
    }

    fn describe(&self) -> Value {
        json!({})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_expire_in_the_queue_are_answered_expired() {
    let _serial = exclusive().await;
    let (open, gate) = std::sync::mpsc::channel();
    let mut cfg = config("dev-e", None, 8);
    cfg.services.insert(
        "gate".into(),
        edgerun::serve::ServiceConfig {
            queue: 8,
            workers: 1,
            ..Default::default()
        },
    );
    let server = edgerun::serve::start(
        cfg,
        vec![std::sync::Arc::new(Gate(std::sync::Mutex::new(gate)))],
        Default::default(),
    )
    .unwrap();
    let mut client = Client::connect(server.embedded_broker.unwrap(), "expiry").await;
    let topic = "edgerun/dev-e/gate/request";
    client
        .send(topic, "first", b"{}".to_vec(), None, None)
        .await; // holds the worker
    client
        .send(topic, "late", b"{}".to_vec(), None, Some(1))
        .await;
    client
        .send(topic, "patient", b"{}".to_vec(), None, Some(60))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        open.send(()).unwrap();
    }
    let answers = client.collect(3, Duration::from_secs(30)).await;
    assert_eq!(answers["first"].1["passed"], true);
    assert_eq!(
        answers["late"].1["error"]["code"], "expired",
        "{}",
        answers["late"].1
    );
    assert_eq!(answers["patient"].1["passed"], true);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_answered_do_not_disturb_the_server() {
    let _serial = exclusive().await;
    let server = start(config("dev-i", None, 16));
    let mut client = Client::connect(server.embedded_broker.unwrap(), "odd").await;
    let topic = "edgerun/dev-i/ocr/request";
    // A wildcard reply topic (which the client library would refuse to publish on), no
    // reply topic at all, and a retained request: acknowledged, logged, counted, unanswered.
    for reply_to in ["a/#", "$SYS/x", ""] {
        let body = serde_json::to_vec(&json!({"image_b64": "", "reply_to": reply_to})).unwrap();
        client
            .raw()
            .publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    client
        .raw()
        .publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            sign_png(),
        )
        .await
        .unwrap();
    let answer = client.ask(topic, sign_png(), Some("image/png")).await;
    assert_eq!(texts(&answer).len(), 3);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_online_and_offline_after_shutdown() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let server = start(config("dev-f", Some(mosquitto.addr()), 16));
    let status = wait_retained(mosquitto.addr(), "edgerun/dev-f/status", |s| {
        s["online"] == true
    })
    .await;
    assert_eq!(status["services"]["ocr"]["default_point"], "cascade0.9@960");
    assert_eq!(
        status["services"]["ocr"]["points"]
            .as_array()
            .unwrap()
            .len(),
        16
    );
    assert_eq!(
        status["services"]["ocr"]["points"][15],
        json!({"name": "det_small/small@1280", "quality": 0.6216, "detector": "small",
               "det_limit": 1280, "recognizer": {"kind": "small"}})
    );
    assert_eq!(status["services"]["ocr"]["policy"]["adaptive"], false);
    // Where each model runs is published, so a silent CPU fallback would show here.
    assert_eq!(
        status["services"]["ocr"]["models"][0],
        json!({
            "model": "ocr/det_tiny.onnx", "engine": "tract", "providers": ["cpu"], "threads": 1
        })
    );
    assert_eq!(
        status["services"]["ocr"]["models"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        status["services"]["ocr"]["models"][1]["model"],
        "ocr/det_small.onnx"
    );
    assert_eq!(status["request_topics"][0], "edgerun/dev-f/ocr/request");
    let telemetry = wait_retained(mosquitto.addr(), "edgerun/dev-f/telemetry", |_| true).await;
    assert!(telemetry["uptime_s"].as_f64().is_some());
    assert_eq!(telemetry["services"]["ocr"]["queue_depth"], 0);
    server.shutdown().unwrap();
    let status = wait_retained(mosquitto.addr(), "edgerun/dev-f/status", |s| {
        s["online"] == false
    })
    .await;
    assert_eq!(status["online"], false);
}

/// Waits (up to 60 s) for a message on `topic` that satisfies `accept`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_and_sub_drive_the_server() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let server = start(config("dev-g", Some(mosquitto.addr()), 16));
    wait_retained(mosquitto.addr(), "edgerun/dev-g/status", |s| {
        s["online"] == true
    })
    .await;
    let port = mosquitto.addr().port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-p",
            &port,
            "-t",
            "cli/replies",
            "-V",
            "mqttv5",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "edgerun/dev-g/ocr/request",
        ])
        .args(["-D", "publish", "response-topic", "cli/replies"])
        .args(["-D", "publish", "correlation-data", "xyz"])
        .args(["-D", "publish", "content-type", "image/png"])
        .arg("-f")
        .arg(fixture("sign.png"))
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(texts(&answer), ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reconnects_after_a_broker_restart() {
    let _serial = exclusive().await;
    let port = free_port();
    let mosquitto = Mosquitto::start_on(port);
    let server = start(config("dev-h", Some(mosquitto.addr()), 16));
    let addr = mosquitto.addr();
    wait_retained(addr, "edgerun/dev-h/status", |s| s["online"] == true).await;
    drop(mosquitto);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _mosquitto = Mosquitto::start_on(port);
    // The new broker knows nothing: the server must reconnect, re-subscribe, re-announce.
    wait_retained(addr, "edgerun/dev-h/status", |s| s["online"] == true).await;
    let mut client = Client::connect(addr, "after-restart").await;
    let answer = client
        .ask("edgerun/dev-h/ocr/request", sign_png(), Some("image/png"))
        .await;
    assert_eq!(texts(&answer).len(), 3);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_mosquitto_shares_the_requests() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let one = start(config("fleet-1", Some(mosquitto.addr()), 64));
    let two = start(config("fleet-2", Some(mosquitto.addr()), 64));
    wait_retained(mosquitto.addr(), "edgerun/fleet-1/status", |s| {
        s["online"] == true
    })
    .await;
    wait_retained(mosquitto.addr(), "edgerun/fleet-2/status", |s| {
        s["online"] == true
    })
    .await;
    let mut client = Client::connect(mosquitto.addr(), "fleet-client").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(word_png());
    let request = serde_json::to_vec(&json!({"image_b64": b64, "crops": true})).unwrap();
    for i in 0..60 {
        client
            .send(
                "edgerun/fleet/ocr/request",
                &format!("f{i}"),
                request.clone(),
                None,
                None,
            )
            .await;
    }
    let answers = client.collect(60, Duration::from_secs(120)).await;
    assert_eq!(answers.len(), 60);
    assert!(
        answers
            .values()
            .all(|(n, body)| *n == 1 && body["text"] == "Station")
    );
    let devices: HashSet<&str> = answers
        .values()
        .map(|(_, b)| b["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, HashSet::from(["fleet-1", "fleet-2"]));
    one.shutdown().unwrap();
    two.shutdown().unwrap();
}

/// A controller over a hand-made profile: the SLO admits the middle point only, so
/// ordinary requests are served there; pins and deadlines decide single requests, and a
/// deadline the planned point cannot meet makes the request step down; the answer names
/// the point and the reason; telemetry (read from a captured Jetson tree) publishes the
/// device and the controller's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_chooses_points_and_telemetry_shows_them() {
    use edgerun::policy::{Controller, Planning, PolicyConfig, ProfiledPoint};
    use edgerun::serve::PointChoice;
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let mut cfg = config("dev-p", Some(mosquitto.addr()), 16);
    cfg.telemetry_root = fixture("jetson-orin-nano");
    // Two threads that would go single under load; the fixture's CPU is idle.
    cfg.engine.threads = 2;
    let points = vec![
        ProfiledPoint::new("tiny@640", 0.30, 1.0, 2.0),
        ProfiledPoint::new("cascade0.9@960", 0.50, 5.0, 10.0),
        ProfiledPoint::new("small@1280", 0.60, 1e5, 1e5),
    ];
    let policy = PolicyConfig {
        slo_ms: 60_000.0,
        ..PolicyConfig::default()
    };
    let controller =
        Controller::new(policy, points, Planning::Median, std::time::Instant::now()).unwrap();
    let choices = [(
        "ocr".to_string(),
        PointChoice::Adaptive(Box::new(controller)),
    )]
    .into();
    let server = edgerun::serve::start(cfg, vec![common::mqtt::ocr_service()], choices).unwrap();
    let mut client = Client::connect(mosquitto.addr(), "adaptive").await;
    let topic = "edgerun/dev-p/ocr/request";
    let word = base64::engine::general_purpose::STANDARD.encode(word_png());
    let scene = base64::engine::general_purpose::STANDARD.encode(sign_png());
    // A request for `image` (a word crop, or a whole scene) with `extra` fields.
    let mut ask = async |image: &str, extra: Value| {
        let request = json!({"image_b64": image, "crops": image == word});
        client.ask(topic, with_fields(request, extra), None).await
    };
    // A scene with its own knobs first (tiny@640's, but not a declared point, so the
    // controller learns nothing from it): the service learns what its stages cost here,
    // since a request cannot plan with costs never seen. Then the profile, which promises
    // cascade0.9@960 in 5 ms, has the controller plan a scene at it within a 20 ms
    // deadline; the service knows better, steps down to what fits (nothing does: the
    // cheapest), and the answer names both points. It is exactly the smaller point's answer.
    let custom = ask(&scene, json!({"rec": "tiny", "det_limit": 640})).await;
    assert_eq!(custom["point"], "custom", "{custom}");
    assert_eq!(texts(&custom), ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
    let stepped = ask(&scene, json!({"deadline_ms": 20})).await;
    assert_eq!(stepped["point"], "tiny@640", "{stepped}");
    assert_eq!(stepped["stepped_down_from"], "cascade0.9@960", "{stepped}");
    assert_eq!(stepped["policy"]["reason"]["kind"], "deadline", "{stepped}");
    assert_eq!(texts(&stepped), texts(&custom));
    let answer = ask(&word, json!({})).await;
    assert_eq!(answer["text"], "Station");
    assert_eq!(answer["point"], "cascade0.9@960");
    assert!(answer.get("stepped_down_from").is_none(), "{answer}");
    assert_eq!(answer["policy"]["reason"]["kind"], "steady");
    let answer = ask(&word, json!({"point": "tiny@640"})).await;
    assert_eq!(answer["point"], "tiny@640");
    assert_eq!(answer["policy"]["reason"]["kind"], "pinned");
    let answer = ask(&word, json!({"deadline_ms": 0.5})).await;
    assert_eq!(answer["point"], "tiny@640");
    assert_eq!(answer["policy"]["reason"]["kind"], "slo_unreachable");
    let answer = ask(&word, json!({"point": "huge"})).await;
    assert_eq!(answer["error"]["code"], "bad_request");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown point \"huge\""),
        "{answer}"
    );
    let answer = ask(&word, json!({"deadline_ms": "soon"})).await;
    assert_eq!(answer["error"]["code"], "bad_request");
    let answer = ask(&scene, json!({"det": "small", "rec": "tiny"})).await;
    assert_eq!(answer["point"], "custom", "{answer}");
    assert_eq!(texts(&answer), ["EDGE RUNTIME", "OPEN 24 HOURS", "EXIT 42"]);
    let answer = ask(&word, json!({"det": "huge"})).await;
    assert_eq!(answer["error"]["code"], "bad_request");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown detector \"huge\""),
        "{answer}"
    );

    let telemetry = wait_retained(mosquitto.addr(), "edgerun/dev-p/telemetry", |_| true).await;
    let policy = &telemetry["services"]["ocr"]["policy"];
    assert_eq!(policy["adaptive"], true);
    assert_eq!(policy["threads"], 2);
    assert_eq!(policy["conditions"]["thread_ratio"], 1.0);
    assert_eq!(policy["point"], "cascade0.9@960");
    assert_eq!(policy["switches"], 0);
    assert_eq!(
        policy["candidates"],
        json!(["tiny@640", "cascade0.9@960", "small@1280"])
    );
    let device = &telemetry["device"];
    assert_eq!(device["cpu"]["cores"], 6);
    assert_eq!(device["gpu"]["load"], 0.253);
    let total_mw = device["power"]["total_mw"].as_f64().unwrap();
    assert!(
        (total_mw - 5032.0 * 968.0 / 1000.0).abs() < 1e-6,
        "{total_mw}"
    );
    assert_eq!(device["power"]["rails"][0]["name"], "VDD_IN");
    let status = wait_retained(mosquitto.addr(), "edgerun/dev-p/status", |s| {
        s["online"] == true
    })
    .await;
    assert_eq!(status["services"]["ocr"]["policy"]["adaptive"], true);
    server.shutdown().unwrap();
}

/// `edgerun serve --services legal` on mosquitto with `cache` as its cache folder (the
/// profile lives there) and one measuring pass per point; stopped with SIGTERM, so that it
/// goes offline as a service manager would stop it.
struct CachedServer(std::process::Child);

impl CachedServer {
    fn start(broker: std::net::SocketAddr, cache: &std::path::Path) -> CachedServer {
        let config = cache.join("serve.toml");
        std::fs::write(&config, "profile_rounds = 1\n").unwrap();
        let log = std::fs::File::create(cache.join("serve.log")).unwrap();
        CachedServer(
            common::edgerun_command()
                .args(["serve", "--device", "zc", "--services", "legal", "--config"])
                .arg(&config)
                .args(["--broker", &format!("mqtt://{broker}")])
                .env("XDG_CACHE_HOME", cache)
                .env_remove("CACHE_DIRECTORY")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for CachedServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next status on `watcher`'s subscription that satisfies `accept`, within `within`.
async fn next_status(
    watcher: &mut edgerun::mqtt::client::RequestClient,
    accept: impl Fn(&Value) -> bool,
    within: Duration,
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match watcher.next_answer(left).await {
            Some((_, status)) if accept(&status) => return status,
            Some(_) => continue,
            None => panic!("no accepted status within {within:?}"),
        }
    }
}

/// Zero configuration: with no profile, `serve` says it is measuring (and its target),
/// answers meanwhile at the default point (or a step down from it, to meet the target), and
/// becomes adaptive by itself; the measurements are kept in the cache folder, so a restart
/// is adaptive at once. (A profile measured with another build or thread count is refused
/// with the reason and measured again: `cli::settings`'s unit test, which decides it for
/// this binary.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cache_becomes_adaptive_by_itself_and_a_restart_reuses_it() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let addr = mosquitto.addr();
    let cache = tempfile::tempdir().unwrap();
    let profile_path = cache.path().join("edgerun/profile.json");
    let status_topic = "edgerun/zc/status";
    let policy_of = |status: &Value| status["services"]["legal"]["policy"].clone();
    let online = |s: &Value| s["online"] == true;
    // Every status, in order, from before the first server starts.
    let mut watcher = edgerun::mqtt::client::RequestClient::connect(addr, "zc-watch")
        .await
        .unwrap();
    watcher
        .raw()
        .subscribe(status_topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    // Starting takes seconds natively and a minute under an emulator; measuring tens of
    // seconds natively and minutes under an emulator.
    let (starting, measuring) = (Duration::from_secs(180), Duration::from_secs(600));

    let started = std::time::Instant::now();
    let server = CachedServer::start(addr, cache.path());
    let first = next_status(&mut watcher, online, starting).await;
    let policy = policy_of(&first);
    assert_eq!(policy["adaptive"], false, "{first}");
    assert_eq!(policy["slo_ms"], 30.0, "the manifest's target: {first}");
    let why = policy["why"].as_str().unwrap();
    assert!(
        why.starts_with("measuring this device's operating points"),
        "{why}"
    );
    assert!(why.contains("no profile at"), "{why}");
    let mut client = Client::connect(addr, "zc-client").await;
    let question = json!({"query": "Can a minor rescind a contract made without consent?"});
    let answer = client
        .ask(
            "edgerun/zc/legal/request",
            serde_json::to_vec(&question).unwrap(),
            None,
        )
        .await;
    assert_eq!(answer["hits"].as_array().map(Vec::len), Some(5), "{answer}");
    let default_point = json!("sn:l3.1-l6.1");
    assert!(
        answer["point"] == default_point || answer["stepped_down_from"] == default_point,
        "{answer}"
    );
    let adaptive = next_status(
        &mut watcher,
        |s| policy_of(s)["adaptive"] == true,
        measuring,
    )
    .await;
    eprintln!(
        "adaptive {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let candidates = policy_of(&adaptive)["candidates"].clone();
    assert!(
        candidates
            .as_array()
            .is_some_and(|c| c.contains(&json!("bm25"))),
        "BM25 alone is always on the front: {adaptive}"
    );
    assert_eq!(policy_of(&adaptive)["slo_ms"], 30.0);
    let stored: Value = serde_json::from_slice(&std::fs::read(&profile_path).unwrap()).unwrap();
    assert_eq!(stored["key"]["threads"], 1);
    let measured = stored["services"]["legal"]["points"].as_array().unwrap();
    let names: Vec<&str> = measured
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // Points the warm-up shows far slower than a better one are not timed; the best and
    // the cheapest never are.
    assert!(
        names.contains(&"bm25") && names.contains(&"sn:l3.1-l6.1"),
        "{names:?}"
    );
    assert!(
        measured.iter().all(|p| p["runs"] == 8),
        "one pass over 8 questions"
    );
    server.stop();

    // A restart adapts at once, from the stored measurements.
    let server = CachedServer::start(addr, cache.path());
    let first = next_status(&mut watcher, online, starting).await;
    assert_eq!(policy_of(&first)["adaptive"], true, "{first}");
    assert_eq!(policy_of(&first)["candidates"], candidates);
    server.stop();

    watcher.disconnect().await;
}

/// `edgerun request` as a script runs it, against mosquitto with a password file: it asks
/// before the device is up, retries with the same correlation data, and prints the answer
/// once the device serves; an error answer exits 1 with its code, no answer exits 2, a bad
/// password is a clear error at once (exit 2), and the fleet topic is answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgerun_request_retries_until_answered_and_exits_with_what_happened() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::with_users(&[("dev", "s3cret"), ("client", "hunter2")]);
    let dir = tempfile::tempdir().unwrap();
    let client_password = dir.path().join("client-password");
    std::fs::write(&client_password, "hunter2\n").unwrap();
    let broker = format!("mqtt://{}", mosquitto.addr());
    let request = |args: &[&str]| {
        let mut command = common::edgerun_command();
        command
            .args(["request", "--broker", &broker, "--username", "client"])
            .arg("--password-file")
            .arg(&client_password)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let finish = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        (out.status.code().unwrap(), stdout, stderr)
    };
    // Asked before the device is up: the first attempt reaches nobody.
    let early = request(&[
        "echo",
        r#"{"a": 1}"#,
        "--device",
        "dev-rq",
        "--timeout-s",
        "1.5",
    ])
    .args(["--attempts", "6"])
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut cfg = config("dev-rq", Some(mosquitto.addr()), 8);
    cfg.services.clear();
    cfg.services.insert("echo".into(), Default::default());
    cfg.username = Some("dev".into());
    // The device's password comes from the environment-free path: a file.
    let device_password = dir.path().join("device-password");
    std::fs::write(&device_password, "s3cret\n").unwrap();
    cfg.password_file = Some(device_password);
    let services: Vec<std::sync::Arc<dyn edgerun::services::Service>> =
        vec![std::sync::Arc::new(edgerun::services::echo::EchoService)];
    let server = edgerun::serve::start(cfg, services, Default::default()).unwrap();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || finish(early))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["echo"], json!({"a": 1}), "{answer}");
    assert_eq!(answer["device"], "dev-rq", "{answer}");

    let fleet = request(&["echo", "-", "--fleet"])
        .stdin(Stdio::piped())
        .spawn();
    let mut fleet = fleet.unwrap();
    use std::io::Write as _;
    fleet
        .stdin
        .take()
        .unwrap()
        .write_all(b"plain words")
        .unwrap();
    let (code, stdout, stderr) = finish(fleet);
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["bytes"], 11, "{answer}");
    assert_eq!(answer["content_type"], "text/plain", "{answer}");

    let (code, stdout, stderr) = finish(
        request(&["echo", r#"{"point": "huge"}"#, "--device", "dev-rq"])
            .spawn()
            .unwrap(),
    );
    assert_eq!(code, 1, "{stdout}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    assert!(
        stderr.starts_with("edgerun request: bad_request: unknown point \"huge\""),
        "{stderr}"
    );

    let nobody = [
        "echo",
        "--device",
        "nobody",
        "--timeout-s",
        "0.3",
        "--attempts",
        "2",
    ];
    let (code, stdout, stderr) = finish(request(&nobody).spawn().unwrap());
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "edgerun request: no answer on edgerun/nobody/echo/request after 2 attempt(s) of 0.3 s"
    );

    std::fs::write(&client_password, "wrong\n").unwrap();
    let (code, _, stderr) = finish(request(&["echo", "--device", "dev-rq"]).spawn().unwrap());
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the broker") && stderr.contains("NotAuthorized"),
        "{stderr}"
    );
    server.shutdown().unwrap();
}
