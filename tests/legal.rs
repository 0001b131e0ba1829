//! Statute retrieval end to end with the shipped models: tokenizer and block-chain parity
//! with the Python export, known queries, bad input, and the service over a real broker.

mod common;

use std::sync::{Arc, OnceLock};

use common::mqtt::{Client, Mosquitto, config, exclusive};
use edgerun::engine::{EngineConfig, TractEngine};
use edgerun::models;
use edgerun::services::legal::{Legal, LegalService, default_corpus};
use edgerun::services::{Payload, Service, Serving};
use serde_json::{Value, json};

fn legal() -> &'static Arc<Legal> {
    static LEGAL: OnceLock<Arc<Legal>> = OnceLock::new();
    LEGAL.get_or_init(|| {
        let engine = TractEngine::new(EngineConfig::default());
        Arc::new(
            Legal::load(&models::default_root(), &engine, &default_corpus()).expect("legal models"),
        )
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
        for (built, row) in articles.iter().zip(shipped.articles.matrix.rows()) {
            let cosine: f32 = built.iter().zip(row).map(|(a, b)| a * b).sum();
            assert!(cosine > 0.999, "{space}: cosine {cosine}");
        }
        for (built, row) in sentences.iter().zip(shipped.sentences.matrix.rows()) {
            let cosine: f32 = built.iter().zip(row).map(|(a, b)| a * b).sum();
            assert!(cosine > 0.999, "{space} sentence: cosine {cosine}");
        }
    }
}
