//! Statute retrieval end to end with the shipped models: tokenizer and block-chain parity
//! with the Python export, known queries, bad input, and the service over a real broker.

mod common;

use std::sync::{Arc, OnceLock};

use common::mqtt::{
    Client, Mosquitto, adaptive_server, config, exclusive, until_moved, with_fields,
};
use edgerun::engine::{EngineConfig, TractEngine};
use edgerun::models;
use edgerun::services::legal::{Legal, LegalService};
use edgerun::services::{Payload, Service, Serving};
use serde_json::{Value, json};

fn legal() -> &'static Arc<Legal> {
    static LEGAL: OnceLock<Arc<Legal>> = OnceLock::new();
    LEGAL.get_or_init(|| {
        let engine = TractEngine::new(EngineConfig::default());
        Arc::new(Legal::load(&models::default_root(), &engine, None).expect("legal models"))
    })
}

fn reference() -> Value {
    let path = common::fixture("legal_reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn tokenizer_gives_the_python_tokenizers_ids() {
    let reference = reference();
    for q in reference["queries"].as_array().unwrap() {
        let expected: Vec<u32> = serde_json::from_value(q["ids"].clone()).unwrap();
        let ids = legal().tokenize(q["text"].as_str().unwrap()).unwrap();
        assert_eq!(ids, expected, "{}", q["text"]);
    }
}

#[test]
fn every_points_block_chain_equals_the_monolithic_model() {
    // The reference is the whole encoder as one torch graph with the shipped weights
    // (export/legal/export.py); here the same point runs as a chain of ONNX blocks.
    let reference = reference();
    let texts: Vec<&str> = reference["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["text"].as_str().unwrap())
        .collect();
    let points = reference["points"].as_object().unwrap();
    assert!(
        points.len() >= 8,
        "anchors, stitches and CoLa chains: {:?}",
        points.keys()
    );
    for (point, rows) in points {
        for (text, row) in texts.iter().zip(rows.as_array().unwrap()) {
            let expected: Vec<f32> = serde_json::from_value(row.clone()).unwrap();
            let got = legal().embed(point, text).unwrap();
            assert_eq!(got.len(), 384);
            let worst = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 2e-4, "{point} on {text:?}: max abs diff {worst}");
        }
    }
}

#[test]
fn known_training_queries_return_their_gold_article_first() {
    // Ten queries from the training years, each with a single gold article that the L6
    // point ranks first by a margin of at least 0.07.
    let cases = [
        ("R01-25-A", "601"),
        ("R01-9-I", "216"),
        ("H22-5-U", "137"),
        ("R01-36-A", "111"),
        ("H30-5-A", "113"),
        ("H20-23-5", "588"),
        ("R01-11-I", "337"),
        ("R03-19-A", "465-10"),
        ("H24-16-3", "398-4"),
        ("H22-22-2", "551"),
    ];
    let queries = edgerun::data::coliee_queries(edgerun::data::COLIEE_TRAIN_YEARS).unwrap();
    for (id, gold) in cases {
        let q = queries
            .iter()
            .find(|q| q.id == id)
            .unwrap_or_else(|| panic!("no query {id}"));
        assert_eq!(q.gold, [gold], "{id}");
        let answer = legal().search(&q.text, 3, Some("l6")).unwrap();
        assert_eq!(answer.hits[0].article, gold, "{id}: {:?}", answer.hits);
        assert!(answer.hits[0].selected);
    }
}

#[test]
fn bad_queries_get_clear_errors() {
    let service = LegalService::new(legal().clone());
    let ask = |content_type: Option<&str>, payload: Payload| {
        service
            .handle(content_type, &payload, Serving::default())
            .unwrap_err()
    };
    let empty = ask(None, Payload::Json(json!({"query": "   "})));
    assert_eq!(
        (empty.code, empty.message.as_str()),
        ("bad_request", "the query is empty")
    );
    let huge = "a ".repeat(512 * 1024);
    let too_long = ask(None, Payload::Json(json!({"query": huge})));
    assert_eq!(too_long.code, "too_large");
    assert_eq!(
        too_long.message,
        "the query is 1048576 bytes; at most 4096 are accepted"
    );
    let binary = ask(
        Some("text/plain"),
        Payload::Raw(vec![b'l', 0xff, 0xfe, b'x'].into()),
    );
    assert_eq!(binary.code, "bad_request");
    assert!(
        binary.message.starts_with("the query is not UTF-8"),
        "{}",
        binary.message
    );
    let bad_k = ask(None, Payload::Json(json!({"query": "lease", "k": 0})));
    assert_eq!(
        (bad_k.code, bad_k.message.as_str()),
        ("bad_request", "k must be 1..=50, not 0")
    );
    let unknown = ask(None, Payload::Json(json!({"query": "lease", "top": 3})));
    assert_eq!(unknown.code, "bad_request");
    assert!(
        unknown.message.contains("unknown field `top`"),
        "{}",
        unknown.message
    );
    let point = service
        .handle(
            None,
            &Payload::Json(json!({"query": "lease"})),
            Serving::at("l12"),
        )
        .unwrap_err();
    assert_eq!(point.code, "bad_request");
    assert!(
        point
            .message
            .starts_with("unknown point \"l12\" (known: bm25, l3, l6"),
        "{}",
        point.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legal_service_answers_over_mosquitto() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::start();
    let mut cfg = config("dev-legal", Some(mosquitto.addr()), 8);
    cfg.services.insert("legal".into(), Default::default());
    let services: Vec<Arc<dyn Service>> = vec![Arc::new(LegalService::new(legal().clone()))];
    let server = edgerun::serve::start(cfg, services, Default::default()).expect("server starts");
    let mut client = Client::connect(mosquitto.addr(), "legal-client").await;
    let request = json!({"query": "Is a manifestation of intention induced by fraud voidable?", "k": 2, "point": "l6"});
    let answer = client
        .ask(
            "edgerun/dev-legal/legal/request",
            serde_json::to_vec(&request).unwrap(),
            Some("application/json"),
        )
        .await;
    assert_eq!(answer["point"], "l6", "{answer}");
    assert_eq!(answer["hits"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(answer["hits"][0]["article"], "96");
    assert_eq!(answer["hits"][0]["heading"], "Fraud or Duress");
    // Plain text works too; bad input is answered, not dropped.
    let answer = client
        .ask(
            "edgerun/dev-legal/legal/request",
            b"The right of retention".to_vec(),
            Some("text/plain"),
        )
        .await;
    assert_eq!(answer["hits"].as_array().unwrap().len(), 5, "{answer}");
    let answer = client
        .ask(
            "edgerun/dev-legal/legal/request",
            vec![0xff, 0xfe],
            Some("text/plain"),
        )
        .await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    server.shutdown().unwrap();
}

/// The statute text in `models/legal` is the benchmark data's, byte for byte (export/legal
/// copies it), so the exam queries' gold articles are the articles served.
#[test]
fn the_shipped_statute_text_is_the_benchmark_datas() {
    let shipped = std::fs::read(models::default_root().join("legal/civil_code_en.txt")).unwrap();
    let data =
        std::fs::read(edgerun::data::root().join("legal/coliee/text/civil_code_en-1to724-2.txt"));
    assert!(
        shipped == data.unwrap(),
        "models/legal/civil_code_en.txt differs"
    );
    assert_eq!(legal().articles().len(), 768);
    assert_eq!(legal().articles()[0].id, "1");
    assert_eq!(legal().articles()[767].id, "724-2");
}

#[test]
fn rebuilding_the_index_reproduces_the_shipped_one() {
    // `edgerun legal index` embeds articles with each space's anchor chain; the shipped
    // index was written by the Python export from the monolithic model (int8 per row).
    for space in ["l3", "l6"] {
        let (articles, sentences) = legal().build_index(space, Some(3)).unwrap();
        let shipped = legal().index(space).unwrap();
        assert_eq!(articles.len(), 3);
        let sentence_count: usize = legal().articles()[..3]
            .iter()
            .map(|a| a.sentences().count())
            .sum();
        assert_eq!(sentences.len(), sentence_count);
        for (row, built) in articles.iter().enumerate() {
            let cosine = shipped.articles.similarity(row, built);
            assert!(cosine > 0.999, "{space}: cosine {cosine}");
        }
        for (row, built) in sentences.iter().enumerate() {
            let cosine = shipped.sentences.similarity(row, built);
            assert!(cosine > 0.999, "{space} sentence: cosine {cosine}");
        }
    }
}

const QUESTION: &str =
    "A minor sold his land without the consent of his parents. May the parents rescind the sale?";

/// The articles of an answer, in order.
fn articles(answer: &Value) -> Vec<String> {
    answer["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits: {answer}"))
        .iter()
        .map(|h| h["article"].as_str().unwrap().to_string())
        .collect()
}

/// The legal service over the shared test models.
fn service() -> Arc<dyn Service> {
    Arc::new(LegalService::new(legal().clone()))
}

/// Inside `serve`, the controller picks the legal service's stitch and depth from the
/// telemetry: a clock capped to a half and then a quarter steps it down from the best
/// SN-Net point to a shorter stitch and then to BM25 at once; back at full clock it steps
/// up only after the window. Pins and deadlines decide single requests. The profile is in
/// seconds and the SLO 30 s, so real query times never matter: the clock alone decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legal_steps_its_stitch_and_depth_with_the_clock_inside_serve() {
    let _serial = exclusive().await;
    let clock = common::ScriptedClock::new();
    let points = [
        ("bm25", 0.6159, 1.0),
        ("cola:4.5", 0.6505, 8_000.0),
        ("sn:l3.2-l6.5", 0.6645, 12_000.0),
        ("sn:l3.1-l6.1", 0.6699, 20_000.0),
    ];
    let server = adaptive_server("dev-la", service(), &clock, &points, 30_000.0);
    let mut client = Client::connect(server.embedded_broker.unwrap(), "legal-adapt").await;
    let topic = "edgerun/dev-la/legal/request";
    let mut ask = async |extra: Value| {
        client
            .ask(topic, with_fields(json!({"query": QUESTION}), extra), None)
            .await
    };
    let answer = ask(json!({})).await;
    assert_eq!(answer["point"], "sn:l3.1-l6.1", "{answer}");
    assert_eq!(answer["policy"]["reason"]["kind"], "steady", "{answer}");
    assert_eq!(
        articles(&answer),
        articles(&json!(
            legal().search(QUESTION, 5, Some("sn:l3.1-l6.1")).unwrap()
        ))
    );
    // Half the clock: the best point would take 40 s; the shorter stitch 24 s fits.
    clock.cap(0.5);
    let (answer, _) = until_moved(&mut ask, "sn:l3.1-l6.1").await;
    assert_eq!(answer["point"], "sn:l3.2-l6.5", "{answer}");
    assert_eq!(answer["policy"]["reason"]["kind"], "overload", "{answer}");
    let predicted = answer["policy"]["predicted_ms"].as_f64().unwrap();
    assert!((predicted - 24_000.0).abs() < 0.01, "12 s x 2: {answer}");
    // A quarter: only BM25 fits (CoLa 4.5 would take 32 s).
    clock.cap(0.25);
    let (answer, _) = until_moved(&mut ask, "sn:l3.2-l6.5").await;
    assert_eq!(answer["point"], "bm25", "{answer}");
    assert_eq!(
        articles(&answer),
        articles(&json!(legal().search(QUESTION, 5, Some("bm25")).unwrap()))
    );
    // Pins and deadlines decide one request each and move nothing.
    let pinned = ask(json!({"point": "l3"})).await;
    assert_eq!(pinned["point"], "l3", "{pinned}");
    assert_eq!(pinned["policy"]["reason"]["kind"], "pinned", "{pinned}");
    clock.cap(1.0);
    let (answer, held) = until_moved(&mut ask, "bm25").await;
    assert_eq!(answer["point"], "sn:l3.1-l6.1", "{answer}");
    assert_eq!(answer["policy"]["reason"]["kind"], "headroom", "{answer}");
    assert!(
        held.as_secs_f64() >= 1.0,
        "stepped up after {held:?}, before the window"
    );
    let due = ask(json!({"deadline_ms": 15_000})).await;
    assert_eq!(due["point"], "sn:l3.2-l6.5", "{due}");
    assert_eq!(due["policy"]["reason"]["kind"], "deadline", "{due}");
    let answer = ask(json!({})).await;
    assert_eq!(answer["point"], "sn:l3.1-l6.1", "{answer}");
    server.shutdown().unwrap();
}

/// A deadline the planned point cannot meet: the controller was told (wrongly) that the
/// best stitched point takes microseconds, so it plans the request there; between two
/// encoder blocks the service sees the deadline gone, finishes with BM25 alone, and the
/// answer names both points. It is exactly BM25's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_query_that_cannot_meet_its_deadline_steps_down_inside_serve() {
    let _serial = exclusive().await;
    // Every block has run once, so the service knows what each costs here.
    for point in legal().points() {
        legal().search(QUESTION, 5, Some(&point.name)).unwrap();
    }
    let planned = legal().search(QUESTION, 5, Some("sn:l3.1-l6.1")).unwrap();
    // A third of what the planned encoder takes on this machine: long enough that the wait
    // before the decision leaves time (the controller, told the point costs microseconds,
    // plans it), too short for its blocks. It scales with the machine, so an emulator's
    // slower queue (milliseconds before the decision) cannot spend it first.
    let deadline_ms = (planned.encode_ms / 3.0).ceil().max(1.0) as u64;
    let clock = common::ScriptedClock::new();
    let points = [("bm25", 0.6159, 0.001), ("sn:l3.1-l6.1", 0.6699, 0.002)];
    let server = adaptive_server("dev-ld", service(), &clock, &points, 30_000.0);
    let mut client = Client::connect(server.embedded_broker.unwrap(), "legal-due").await;
    let request = json!({"query": QUESTION, "deadline_ms": deadline_ms});
    let answer = client
        .ask(
            "edgerun/dev-ld/legal/request",
            serde_json::to_vec(&request).unwrap(),
            None,
        )
        .await;
    assert_eq!(answer["point"], "bm25", "{answer}");
    assert_eq!(answer["stepped_down_from"], "sn:l3.1-l6.1", "{answer}");
    assert_eq!(answer["policy"]["reason"]["kind"], "deadline", "{answer}");
    assert_eq!(
        articles(&answer),
        articles(&json!(legal().search(QUESTION, 5, Some("bm25")).unwrap()))
    );
    server.shutdown().unwrap();
}

/// In the library: a query due now steps down before its first block (to the only point
/// with no blocks left to run), and one with time to spare runs its point.
#[test]
fn search_by_a_deadline_finishes_at_a_point_its_blocks_lead_to() {
    let full = legal().search(QUESTION, 5, Some("sn:l3.1-l6.1")).unwrap();
    assert_eq!(full.stepped_down_from, None);
    let later = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let roomy = legal()
        .search_by(QUESTION, 5, Some("sn:l3.1-l6.1"), Some(later))
        .unwrap();
    assert_eq!(roomy.point, "sn:l3.1-l6.1");
    assert_eq!(roomy.stepped_down_from, None);
    assert_eq!(
        roomy.hits.iter().map(|h| &h.article).collect::<Vec<_>>(),
        full.hits.iter().map(|h| &h.article).collect::<Vec<_>>()
    );
    let now = std::time::Instant::now();
    let late = legal()
        .search_by(QUESTION, 5, Some("sn:l3.1-l6.1"), Some(now))
        .unwrap();
    assert_eq!(late.point, "bm25");
    assert_eq!(late.stepped_down_from.as_deref(), Some("sn:l3.1-l6.1"));
    let bm25 = legal().search(QUESTION, 5, Some("bm25")).unwrap();
    assert_eq!(late.hits, bm25.hits);
}
