//! `edgerun request SERVICE [PAYLOAD]`: asks a serving device (or the fleet) once, over
//! MQTT v5, and prints the answer, for scripts and shells.
//!
//! It publishes with a response topic and correlation data, waits, and on a timeout
//! resends with the same correlation data (a bounded number of attempts), so a device that
//! has answered already can recognise the retry. The exit code says what happened: 0 an
//! answer, 1 an error answer (its code on stderr), 2 no answer or no broker.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::Args;
use serde_json::Value;

use super::broker::BrokerArgs;
use crate::mqtt::client::{ConnectFailed, Reply, RequestClient};
use crate::mqtt::{BrokerUrl, Topics};
use crate::serve::config::ServeConfig;

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The service to ask: ocr, legal, generate, echo.
    pub service: String,
    /// The request: a JSON object (`'{"query": "..."}'`), a file (an image is sent as
    /// image/png or image/jpeg, a .json file as JSON), `-` for standard input, or any
    /// other text as text/plain. Default: `{}`.
    pub payload: Option<String>,
    /// The device to ask [default: the configuration's device, or this host's name].
    #[arg(long, conflicts_with = "fleet")]
    pub device: Option<String>,
    /// Ask the fleet (any one member answers) instead of one device.
    #[arg(long)]
    pub fleet: bool,
    #[command(flatten)]
    pub connection: BrokerArgs,
    /// A serve configuration to take the broker, prefix, device and credentials from.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// First topic level [default: the configuration's, or edgerun].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Seconds to wait for the answer to each attempt.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub timeout_s: f64,
    /// Attempts in all; each retry carries the same correlation data.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub attempts: u32,
    /// Where to write a media answer (generate's PNG); its metadata is printed.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// What `edgerun request` publishes: the bytes and their content type.
#[derive(Debug, PartialEq)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// The request body `payload` stands for (see [`RequestArgs::payload`]).
pub fn body_of(payload: Option<&str>) -> Result<Body> {
    let json = |bytes: Vec<u8>| Body {
        bytes,
        content_type: "application/json",
    };
    let Some(payload) = payload else {
        return Ok(json(b"{}".to_vec()));
    };
    if payload == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        return Ok(sniff(bytes));
    }
    if payload.trim_start().starts_with('{') {
        let _: Value = serde_json::from_str(payload).context("the request is not valid JSON")?;
        return Ok(json(payload.as_bytes().to_vec()));
    }
    let path = Path::new(payload);
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {payload}"))?;
        return Ok(sniff(bytes));
    }
    Ok(Body {
        bytes: payload.as_bytes().to_vec(),
        content_type: "text/plain",
    })
}

/// The content type of bytes read from a file or stdin, by their first bytes.
fn sniff(bytes: Vec<u8>) -> Body {
    let content_type = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if serde_json::from_slice::<Value>(&bytes).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    Body {
        bytes,
        content_type,
    }
}

pub fn run(args: &RequestArgs) -> Result<ExitCode> {
    if args.attempts == 0 || !args.timeout_s.is_finite() || args.timeout_s <= 0.0 {
        bail!("--attempts must be at least 1 and --timeout-s positive");
    }
    let mut config = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    args.connection.apply(&mut config);
    let broker = config
        .broker
        .clone()
        .unwrap_or_else(|| config.embedded_bind.to_string());
    let url = BrokerUrl::parse(&broker)?;
    let credentials = config.credentials()?;
    let tls = config.tls.clone();
    let prefix = args.prefix.as_deref().unwrap_or(&config.prefix);
    let device = args.device.as_deref().unwrap_or(&config.device);
    let topics = Topics::new(prefix, device);
    let topic = if args.fleet {
        topics.fleet_request(&args.service)
    } else {
        topics.device_request(&args.service)
    };
    let body = body_of(args.payload.as_deref())?;
    // One id names this client and its request: the reply topic and correlation data.
    let id = format!("edgerun-request-{}-{}", std::process::id(), nanos());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        let client = RequestClient::connect_to(&url, &id, credentials.as_ref(), &tls).await?;
        Ok::<_, ConnectFailed>(ask(client, &topic, &id, body, args).await)
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("edgerun request: broker {}:{}: {e}", url.host, url.port);
            return Ok(ExitCode::from(2));
        }
    };
    let Some(answer) = answer else {
        eprintln!(
            "edgerun request: no answer on {topic} after {} attempt(s) of {} s",
            args.attempts, args.timeout_s
        );
        return Ok(ExitCode::from(2));
    };
    print_answer(answer, args.out.as_deref())
}

/// Sends the request, and again with the same correlation data after each timeout.
async fn ask(
    mut client: RequestClient,
    topic: &str,
    id: &str,
    body: Body,
    args: &RequestArgs,
) -> Option<Value> {
    let timeout = Duration::from_secs_f64(args.timeout_s);
    for _ in 0..args.attempts {
        let sent = client
            .send(topic, id, body.bytes.clone(), Some(body.content_type), None)
            .await;
        if sent.is_err() {
            break;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
            match client.next_answer(left).await {
                Some((answer_id, answer)) if answer_id == id => {
                    client.disconnect().await;
                    return Some(answer);
                }
                Some(_) => continue,
                None => break,
            }
        }
    }
    client.disconnect().await;
    None
}

/// Prints a JSON answer as one line (a media answer's metadata, the media to `out`);
/// an error answer also goes to stderr as `CODE: message`, exit code 1.
fn print_answer(answer: Value, out: Option<&Path>) -> Result<ExitCode> {
    let reply = Reply::of(&answer);
    let printed = match (answer.get("payload_base64").and_then(Value::as_str), out) {
        (Some(media), Some(out)) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(media)?;
            std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
            answer.get("meta").cloned().unwrap_or(Value::Null)
        }
        _ => answer,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{printed}")?;
    match reply.error {
        Some(error) => {
            eprintln!("edgerun request: {}: {}", error.code, error.message);
            Ok(ExitCode::from(1))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_json_text_or_sniffed_files() {
        assert_eq!(body_of(None).unwrap().bytes, b"{}");
        let json = body_of(Some(r#"{"query": "lease"}"#)).unwrap();
        assert_eq!(json.content_type, "application/json");
        assert_eq!(json.bytes, br#"{"query": "lease"}"#);
        assert!(body_of(Some("{not json")).is_err());
        let text = body_of(Some("Is a lease void?")).unwrap();
        assert_eq!(text.content_type, "text/plain");
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("x.bin");
        std::fs::write(&png, b"\x89PNG\r\n\x1a\n....").unwrap();
        let file = body_of(Some(png.to_str().unwrap())).unwrap();
        assert_eq!(file.content_type, "image/png");
        assert_eq!(
            sniff(vec![0xff, 0xd8, 0xff, 0xe0]).content_type,
            "image/jpeg"
        );
        assert_eq!(sniff(b"[1, 2]".to_vec()).content_type, "application/json");
    }
}
