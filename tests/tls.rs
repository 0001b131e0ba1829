//! TLS and credentials against Debian's mosquitto, with certificates made by the test (a
//! throwaway CA): `serve` and `edgerun request` over `mqtts://`, mutual TLS with
//! `require_certificate`, and the refusals that must end a start with their reason instead
//! of a silent retry loop (an unknown CA, an expired certificate, a certificate for another
//! host, a bad password); and the embedded broker admitting only the users of its password
//! file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use common::mqtt::{Mosquitto, config, exclusive, free_port};
use edgerun::mqtt::TlsSettings;
use edgerun::serve::{self, ServeConfig};
use edgerun::services::Service;
use edgerun::services::echo::EchoService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use serde_json::{Value, json};

/// A certificate authority of the test's own.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Authority { cert, key }
    }

    /// Writes `{name}.pem` and `{name}.key` into `dir`: a certificate for `hosts` (DNS names
    /// or IP addresses), valid from `from` to `until` (years).
    fn issue(&self, dir: &Path, name: &str, hosts: &[&str], years: (i32, i32)) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for host in hosts {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*host).try_into().unwrap()),
            });
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        dir.join(format!("{name}.pem"))
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// The certificates of one test: a CA, a server certificate for localhost and 127.0.0.1,
/// an expired one, one for another host, and client certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("edgerun test CA");
        ca.issue(
            dir.path(),
            "server",
            &["localhost", "127.0.0.1"],
            (2024, 2099),
        );
        ca.issue(
            dir.path(),
            "expired",
            &["localhost", "127.0.0.1"],
            (2020, 2021),
        );
        ca.issue(dir.path(), "elsewhere", &["broker.example"], (2024, 2099));
        ca.issue(dir.path(), "device", &["dev-tls"], (2024, 2099));
        ca.issue(dir.path(), "client", &["client"], (2024, 2099));
        let other_ca = Authority::new("someone else's CA").write(dir.path(), "other-ca");
        let ca = ca.write(dir.path(), "ca");
        Pki { dir, ca, other_ca }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A TLS listener on `port` with the server certificate `name`.
    fn listener(&self, port: u16, name: &str, require_certificate: bool) -> String {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
            self.ca.display(),
            self.path(&format!("{name}.pem")).display(),
            self.path(&format!("{name}.key")).display(),
            require_certificate,
        )
    }

    /// TLS settings trusting `ca` only, with the client certificate `client` if given.
    fn settings(&self, ca: &Path, client: Option<&str>) -> TlsSettings {
        TlsSettings {
            ca_file: Some(ca.to_path_buf()),
            system_roots: false,
            cert_file: client.map(|c| self.path(&format!("{c}.pem"))),
            key_file: client.map(|c| self.path(&format!("{c}.key"))),
        }
    }
}

/// An echo server joining `broker` with `tls`.
fn echo_server(broker: &str, tls: TlsSettings) -> anyhow::Result<serve::ServerHandle> {
    let mut cfg: ServeConfig = config("dev-tls", None, 8);
    cfg.broker = Some(broker.into());
    cfg.tls = tls;
    cfg.services.clear();
    cfg.services.insert("echo".into(), Default::default());
    let services: Vec<Arc<dyn Service>> = vec![Arc::new(EchoService)];
    serve::start(cfg, services, Default::default())
}

/// Runs `edgerun request` with `args`: (exit code, stdout, stderr).
async fn request(args: &[&str]) -> (i32, String, String) {
    request_with_password(args, None).await
}

/// Runs `edgerun request` with `args` and `EDGERUN_MQTT_PASSWORD` set to `password`.
async fn request_with_password(args: &[&str], password: Option<&str>) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let password = password.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut command = common::edgerun_command();
        command.env_remove("EDGERUN_MQTT_PASSWORD");
        if let Some(password) = password {
            command.env("EDGERUN_MQTT_PASSWORD", password);
        }
        let out = command
            .arg("request")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_request_talk_over_mutual_tls_and_refuse_bad_certificates_at_once() {
    let _serial = exclusive().await;
    let pki = Pki::new();
    let (mtls, expired, elsewhere) = (free_port(), free_port(), free_port());
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\n{}{}{}",
        pki.listener(mtls, "server", true),
        pki.listener(expired, "expired", false),
        pki.listener(elsewhere, "elsewhere", false),
    );
    let run_dir = pki.path("mosquitto");
    let _mosquitto = tokio::task::spawn_blocking(move || {
        edgerun::bench::mqtt::Mosquitto::with_conf(mtls, run_dir, &conf).expect("mosquitto")
    })
    .await
    .unwrap();
    let url = |port: u16| format!("mqtts://localhost:{port}");

    // Mutual TLS: the device and the client each show a certificate from the CA.
    let server = echo_server(&url(mtls), pki.settings(&pki.ca, Some("device"))).unwrap();
    let ca = pki.ca.to_str().unwrap().to_string();
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let mtls_url = url(mtls);
    let client_args = [
        "--broker",
        &mtls_url,
        "--ca-file",
        &ca,
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    let mut args = vec!["echo", r#"{"over": "tls"}"#, "--device", "dev-tls"];
    args.extend(client_args);
    let (code, stdout, stderr) = request(&args).await;
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["echo"], json!({"over": "tls"}), "{answer}");
    assert_eq!(answer["device"], "dev-tls", "{answer}");
    server.shutdown().unwrap();

    // Without a client certificate the broker ends the handshake: exit 2, a reason.
    let no_cert = [
        "echo",
        "--broker",
        &url(mtls),
        "--ca-file",
        &ca,
        "--attempts",
        "1",
    ];
    let (code, _, stderr) = request(&no_cert).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot connect to the broker"), "{stderr}");

    // Refusals the device cannot mend by retrying end its start, each with its reason.
    let cases = [
        (
            mtls,
            pki.settings(&pki.other_ca, Some("device")),
            "UnknownIssuer",
        ),
        (expired, pki.settings(&pki.ca, None), "certificate expired"),
        (
            elsewhere,
            pki.settings(&pki.ca, None),
            "not valid for name \"localhost\"",
        ),
    ];
    for (port, tls, reason) in cases {
        let started = std::time::Instant::now();
        let error = match echo_server(&url(port), tls) {
            Ok(_) => panic!("started against a broker it must refuse ({reason})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            error.contains(&format!("cannot connect to the broker {}", url(port)))
                && error.contains("invalid peer certificate")
                && error.contains(reason),
            "{error}"
        );
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{:?}",
            started.elapsed()
        );
    }
    // A missing CA file is a configuration error before any connection.
    let missing = pki.settings(&pki.path("no-such-ca.pem"), None);
    let error = format!("{:#}", echo_server(&url(mtls), missing).err().unwrap());
    assert!(error.contains("no-such-ca.pem"), "{error}");
}

/// A device with a wrong broker password stops at start with the broker's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_password_ends_the_start_with_the_refusal() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::with_users(&[("dev", "s3cret")]);
    let mut cfg = config("dev-pw", Some(mosquitto.addr()), 8);
    cfg.services.clear();
    cfg.services.insert("echo".into(), Default::default());
    cfg.username = Some("dev".into());
    cfg.password = Some("wrong".into());
    let services: Vec<Arc<dyn Service>> = vec![Arc::new(EchoService)];
    let error = match serve::start(cfg, services, Default::default()) {
        Ok(_) => panic!("started with a wrong password"),
        Err(e) => format!("{e:#}"),
    };
    let broker = format!("mqtt://{}", mosquitto.addr());
    assert_eq!(
        error,
        format!(
            "cannot connect to the broker {broker}: Connection refused, return code: `NotAuthorized`"
        )
    );
}

/// The same refusal through the binary, as systemd runs it: the start fails with the
/// reason on stderr and exit code 78 (EX_CONFIG), which the unit does not restart on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refused_by_the_broker_exits_with_ex_config() {
    let _serial = exclusive().await;
    let mosquitto = Mosquitto::with_users(&[("dev", "s3cret")]);
    let broker = format!("mqtt://{}", mosquitto.addr());
    let output = tokio::task::spawn_blocking(move || {
        common::edgerun_command()
            .args(["serve", "--broker", &broker, "--username", "dev"])
            .args(["--device", "dev-exit", "--services", "echo", "--no-adapt"])
            .env("EDGERUN_MQTT_PASSWORD", "wrong")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let expected = format!(
        "edgerun: error: cannot connect to the broker mqtt://{}: Connection refused, return code: `NotAuthorized`",
        mosquitto.addr()
    );
    assert!(stderr.lines().any(|l| l == expected), "{stderr}");
}

/// The embedded broker with a password file made by `edgerun passwd`: the device and a
/// client with their passwords are admitted; a wrong password and an anonymous client are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_only_the_users_of_its_password_file() {
    let _serial = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("broker-users");
    for (user, password) in [
        ("dev-emb", "devpass"),
        ("client", "old"),
        ("client", "clientpass"),
    ] {
        let mut child = common::edgerun_command()
            .env_remove("EDGERUN_MQTT_PASSWORD")
            .arg("passwd")
            .arg(&users)
            .arg(user)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // One line per user (the second `client` replaced the first), hashed.
    let text = std::fs::read_to_string(&users).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("dev-emb:$argon2id$"), "{text}");
    assert!(lines[1].starts_with("client:$argon2id$"), "{text}");
    assert!(!text.contains("clientpass"), "{text}");

    let mut cfg = config("dev-emb", None, 8);
    cfg.services.clear();
    cfg.services.insert("echo".into(), Default::default());
    cfg.embedded_password_file = Some(users);
    cfg.username = Some("dev-emb".into());
    cfg.password = Some("devpass".into());
    let services: Vec<Arc<dyn Service>> = vec![Arc::new(EchoService)];
    let server = serve::start(cfg, services, Default::default()).unwrap();
    let broker = format!("mqtt://{}", server.embedded_broker.unwrap());
    let ask = [
        "echo",
        "{}",
        "--device",
        "dev-emb",
        "--broker",
        &broker,
        "--attempts",
        "1",
    ];
    let mut as_client = ask.to_vec();
    as_client.extend(["--username", "client"]);
    let (code, stdout, stderr) = request_with_password(&as_client, Some("clientpass")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"echo":{},"device":"dev-emb"}"#);
    let (code, _, stderr) = request_with_password(&as_client, Some("old")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot connect to the broker"), "{stderr}");
    let (code, _, stderr) = request(&ask).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot connect to the broker"), "{stderr}");
    server.shutdown().unwrap();
}

/// The embedded broker's own TLS listener (beside its loopback one, which the device itself
/// uses), requiring client certificates: a client with one is answered over mqtts://, one
/// without is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_serves_mutual_tls_on_its_own_listener() {
    let _serial = exclusive().await;
    let pki = Pki::new();
    let port = free_port();
    let mut cfg = config("dev-etls", None, 8);
    cfg.services.clear();
    cfg.services.insert("echo".into(), Default::default());
    cfg.embedded_tls = Some(edgerun::mqtt::broker::EmbeddedTls {
        bind: ([127, 0, 0, 1], port).into(),
        cert_file: pki.path("server.pem"),
        key_file: pki.path("server.key"),
        ca_file: Some(pki.ca.clone()),
        require_client_cert: true,
    });
    let services: Vec<Arc<dyn Service>> = vec![Arc::new(EchoService)];
    let server = serve::start(cfg, services, Default::default()).unwrap();
    let broker = format!("mqtts://localhost:{port}");
    let ca = pki.ca.to_str().unwrap().to_string();
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let ask = [
        "echo",
        "{}",
        "--device",
        "dev-etls",
        "--broker",
        &broker,
        "--ca-file",
        &ca,
    ];
    let mut with_cert = ask.to_vec();
    with_cert.extend(["--cert-file", cert.to_str().unwrap()]);
    with_cert.extend(["--key-file", key.to_str().unwrap()]);
    let (code, stdout, stderr) = request(&with_cert).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"echo":{},"device":"dev-etls"}"#);
    let mut without = ask.to_vec();
    without.extend(["--attempts", "1", "--timeout-s", "2"]);
    let (code, _, stderr) = request(&without).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot connect to the broker"), "{stderr}");
    server.shutdown().unwrap();
}
