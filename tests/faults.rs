//! Faults inside `edgerun serve`: services that panic, requests that come again (client
//! retries, redeliveries), and a fleet member that dies for good.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::mqtt::{Client, Mosquitto, ServeProcess, config, exclusive, wait_retained};
use edgerun::serve::{self, ServiceConfig};
use edgerun::services::{Handled, Output, Payload, Served, Service, ServiceError, Serving};
use serde_json::{Value, json};

/// A service that fails on command. `{"panic": "service"}` panics in the service;
/// `{"panic": "payload"}` panics with a payload whose own drop panics again (it escapes the
/// request's guard and unwinds the worker's loop); `{"sleep_ms": n}` takes that long.
/// Every answer says how many requests the service has computed so far.
#[derive(Default)]
struct Faulty {
    computed: AtomicU64,
}

/// A panic payload that panics when dropped.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("the payload's drop fails too");
    }
}

impl Service for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn answer(
        &self,
        _content_type: Option<&str>,
        payload: &Payload,
        _serving: Serving<'_>,
    ) -> Result<Handled, ServiceError> {
        let computed = self.computed.fetch_add(1, Ordering::SeqCst) + 1;
        let Payload::Json(request) = payload else {
            return Err(ServiceError::new("bad_request", "JSON only"));
        };
        match request["panic"].as_str() {
            Some("service") => panic!("boom in the service"),
            Some("payload") => std::panic::panic_any(PanicsOnDrop),
            _ => {}
        }
        if let Some(ms) = request["sleep_ms"].as_u64() {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(Handled {
            output: Output::Json(json!({"computed": computed, "n": request["n"]})),
            served: Served::default(),
        })
    }

    fn describe(&self) -> Value {
        json!({"points": []})
    }
}

fn faulty_server(device: &str) -> serve::ServerHandle {
    let mut cfg = config(device, None, 16);
    cfg.services.clear();
    cfg.services
        .insert("faulty".into(), ServiceConfig::default());
    let service: Arc<dyn Service> = Arc::new(Faulty::default());
    serve::start(cfg, vec![service], Default::default()).expect("server starts")
}

fn body(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// Sends `value` as a JSON request with correlation data `id`.
async fn send_json(client: &Client, topic: &str, id: &str, value: Value) {
    client
        .send(topic, id, body(value), Some("application/json"), None)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_panics_is_answered_internal_and_the_lane_serves_on() {
    let _serial = exclusive().await;
    let server = faulty_server("dev-panic");
    let addr = server.embedded_broker.unwrap();
    let mut client = Client::connect(addr, "panics").await;
    let topic = "edgerun/dev-panic/faulty/request";
    let json = Some("application/json");

    let answer = client
        .ask(topic, body(json!({"panic": "service"})), json)
        .await;
    assert_eq!(answer["error"]["code"], "internal");
    assert_eq!(
        answer["error"]["message"],
        "the service failed: boom in the service"
    );
    let answer = client.ask(topic, body(json!({"n": 1})), json).await;
    assert_eq!(
        (answer["n"].as_u64(), answer["computed"].as_u64()),
        (Some(1), Some(2))
    );

    // The payload's drop panics after the answer is out: the worker's loop unwinds, and
    // the lane starts it again.
    let answer = client
        .ask(topic, body(json!({"panic": "payload"})), json)
        .await;
    assert_eq!(answer["error"]["code"], "internal");
    assert_eq!(
        answer["error"]["message"],
        "the service failed: a panic without a message"
    );
    for n in 2..5 {
        let answer = client.ask(topic, body(json!({"n": n})), json).await;
        assert_eq!(answer["n"], n);
    }
    let telemetry = wait_retained(addr, "edgerun/dev-panic/telemetry", |t| {
        t["services"]["faulty"]["answered"] == 6
    })
    .await;
    let stats = &telemetry["services"]["faulty"];
    assert_eq!(
        (
            &stats["panics"],
            &stats["worker_restarts"],
            &stats["errors"]
        ),
        (&json!(2), &json!(1), &json!(2))
    );
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_comes_again_is_answered_from_the_cache_not_computed_again() {
    let _serial = exclusive().await;
    let server = faulty_server("dev-again");
    let addr = server.embedded_broker.unwrap();
    let mut client = Client::connect(addr, "again").await;
    let topic = "edgerun/dev-again/faulty/request";

    // Three copies while the first is computed: they wait for its answer, which answers
    // them all (same reply topic, same correlation data). Two more after it was answered
    // get the kept answer again. One computation in all.
    for _ in 0..3 {
        send_json(&client, topic, "r1", json!({"n": 1, "sleep_ms": 300})).await;
    }
    let first = client.collect(1, Duration::from_secs(20)).await;
    assert_eq!(first["r1"].1["computed"], 1);
    assert!(
        client
            .collect(1, Duration::from_millis(1500))
            .await
            .is_empty()
    );
    for _ in 0..2 {
        send_json(&client, topic, "r1", json!({"n": 1, "sleep_ms": 300})).await;
    }
    let again = client.collect(2, Duration::from_secs(20)).await;
    assert_eq!(again["r1"].0, 2);
    assert_eq!(again["r1"].1, first["r1"].1);

    // Another correlation is another request; a failure is not kept (a retry computes).
    send_json(&client, topic, "r2", json!({"n": 2})).await;
    send_json(&client, topic, "p", json!({"panic": "service"})).await;
    let got = client.collect(2, Duration::from_secs(20)).await;
    assert_eq!(got["r2"].1["computed"], 2);
    assert_eq!(got["p"].1["error"]["code"], "internal");
    send_json(&client, topic, "p", json!({"panic": "service"})).await;
    let got = client.collect(1, Duration::from_secs(20)).await;
    assert_eq!(got["p"].1["error"]["code"], "internal");

    let telemetry = wait_retained(addr, "edgerun/dev-again/telemetry", |t| {
        t["services"]["faulty"]["answered"] == 6
    })
    .await;
    let stats = &telemetry["services"]["faulty"];
    // r1: two copies joined the original, two got the kept answer; "p" ran twice.
    assert_eq!(
        (&stats["requests"], &stats["replayed"], &stats["panics"]),
        (&json!(8), &json!(4), &json!(2))
    );
    let cache = &telemetry["answer_cache"];
    assert_eq!(cache["entries"], 2, "r1 and r2 are kept, p is not");
    assert!(cache["bytes"].as_u64().unwrap() > 0);
    assert_eq!(cache["max_entries"], 256);
    server.shutdown().unwrap();
}

/// Two members on mosquitto; one is killed (SIGKILL) while both hold fleet work and never
/// comes back. The client resends what is unanswered after a timeout with the same
/// correlation data, as `edgerun request --fleet` does: every request is answered, and
/// everything sent after the kill goes to the survivor at once (the dead member's fleet
/// session ended with its connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_member_that_dies_for_good_loses_nothing() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let addr = mosquitto.addr();
    let doomed = ServeProcess::start(addr, "die-1", "ocr");
    let _survivor = ServeProcess::start(addr, "die-2", "ocr");
    wait_retained(addr, "edgerun/die-1/status", |s| s["online"] == true).await;
    wait_retained(addr, "edgerun/die-2/status", |s| s["online"] == true).await;
    let mut client = Client::connect(addr, "failover-client").await;
    let topic = "edgerun/fleet/ocr/request";
    let png = std::fs::read(common::fixture("sign.png")).unwrap();
    let word = std::fs::read(common::fixture("sign_word.png")).unwrap();
    let image = Some("image/png");
    // Full scenes (a few hundred ms each): both members have a queue when one dies.
    let mut sent: Vec<String> = Vec::new();
    for i in 0..24 {
        let id = format!("before-{i}");
        client.send(topic, &id, png.clone(), image, None).await;
        sent.push(id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(doomed);
    wait_retained(addr, "edgerun/die-1/status", |s| s["online"] == false).await;
    for i in 0..12 {
        let id = format!("after-{i}");
        client.send(topic, &id, word.clone(), image, None).await;
        sent.push(id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answers = client.collect(sent.len(), Duration::from_secs(10)).await;
    eprintln!(
        "answered before any retry: {} of {}",
        answers.len(),
        sent.len()
    );
    let after_kill_at_once = (0..12).all(|i| answers.contains_key(&format!("after-{i}")));
    for _attempt in 0..3 {
        let missing: Vec<&String> = sent
            .iter()
            .filter(|id| !answers.contains_key(*id))
            .collect();
        eprintln!("unanswered, resent: {missing:?}");
        if missing.is_empty() {
            break;
        }
        for id in &missing {
            let payload = if id.starts_with("before") {
                &png
            } else {
                &word
            };
            client.send(topic, id, payload.clone(), image, None).await;
        }
        let more = client.collect(missing.len(), Duration::from_secs(30)).await;
        answers.extend(more);
    }
    let missing: Vec<&String> = sent
        .iter()
        .filter(|id| !answers.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "never answered: {missing:?}");
    assert!(
        after_kill_at_once,
        "requests after the kill waited for a retry"
    );
    for (id, (_, body)) in &answers {
        let expected = if id.starts_with("before") { 3 } else { 1 };
        let items = body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: {body}"));
        assert_eq!(items.len(), expected, "{id}: {body}");
        if id.starts_with("after") {
            assert_eq!(body["device"], "die-2", "{id}");
        }
    }
}
