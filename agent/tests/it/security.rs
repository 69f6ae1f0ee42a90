//! The cluster token and TLS on real agents: refused without credentials, served with them.

use crate::harness::*;
use mozen_agent::security::{ClientTransport, Security};
use mozen_proto as pb;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

const TOKEN: &str = "mozen-test-token-0123456789abcdef";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn transport(
    token: Option<&Path>,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> ClientTransport {
    Security::for_client(token, ca, cert, key).unwrap().client()
}

/// The gRPC status of one `Status` RPC through `t` at `addr`.
async fn status_code(t: &ClientTransport, addr: &str) -> Result<(), tonic::Status> {
    let mut c = pb::mozen_client::MozenClient::new(t.channel(addr).unwrap());
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(Duration::from_secs(5));
    c.status(req).await.map(|_| ())
}

/// Runs the `mozen` CLI with `env` and returns its output, failing the test on an error.
fn cli_ok(c: &Cluster, env: &[(&str, &Path)], args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .env("MOZEN_ADDR", c.addrs())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mozen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn agent_log(c: &Cluster, id: u64) -> String {
    let prefix = format!("n{id}.log");
    std::fs::read_dir(c.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_required_by_both_services_and_by_peers() {
    let secrets = TempDir::new().unwrap();
    let tok = write(secrets.path(), "token", &format!("{TOKEN}\n"));
    let mut c = Cluster::new(3, &["--token-file", s(&tok)]).with_client_transport(transport(
        Some(&tok),
        None,
        None,
        None,
    ));
    for a in &mut c.agents {
        a.start();
    }
    c.ready(3).await;
    let got: Value = c.client().call("echo", json!("with token")).await.unwrap();
    assert_eq!(got, json!("with token"));

    let addr = c.agents[0].addr.clone();
    let none = ClientTransport::default();
    let e = status_code(&none, &addr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("requires a token"), "{e}");
    let mut raft = pb::raft_client::RaftClient::new(none.channel(&addr).unwrap());
    let e = raft
        .vote(pb::RaftPayload {
            version: 1,
            data: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "Raft service: {e}");
    let other = write(secrets.path(), "other", "another-token-0123456789abcdef");
    let e = status_code(&transport(Some(&other), None, None, None), &addr)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("does not match"), "{e}");

    // The CLI: refused without the token, served with MOZEN_TOKEN_FILE.
    let out = c.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MZ-UNAUTHENTICATED"), "{err}");
    let out = cli_ok(&c, &[("MOZEN_TOKEN_FILE", &tok)], &["call", "echo", "7"]);
    assert_eq!(out.trim(), "7");

    // An agent without the token cannot join: its peers refuse it.
    let i = c.add(4, &[]);
    c.agents[i].start();
    eventually(
        Duration::from_secs(20),
        "agent 4 reports the refusal",
        || async { agent_log(&c, 4).contains("MZ-UNAUTHENTICATED") },
    )
    .await;
    let nodes = c.nodes().await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(!nodes.iter().any(|n| n.id == 4));
}

#[test]
fn public_address_without_token_refuses_to_start() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let out = Command::new(agent_bin())
        .args(["--id", "1", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--advertise", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("n1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--listen '0.0.0.0:{port}'"))
            && err.contains("needs --token-file")
            && err.contains("--insecure"),
        "{err}"
    );
    assert!(!dir.path().join("n1").exists(), "nothing was created");
}

/// A CA, one certificate for the agents (server and client use) and one for clients.
struct Pki {
    ca: PathBuf,
    agent: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Mozen test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, sans: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = usage;
        let cert = p.signed_by(&key, &ca).unwrap();
        (
            write(dir, &format!("{name}.crt"), &cert.pem()),
            write(dir, &format!("{name}.key"), &key.serialize_pem()),
        )
    };
    let agent = leaf(
        "agent",
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let client = leaf("client", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    Pki {
        ca: write(dir, "ca.crt", &ca.pem()),
        agent,
        client,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_cluster_serves_only_clients_with_certificates() {
    let secrets = TempDir::new().unwrap();
    let pki = make_pki(secrets.path());
    let tok = write(secrets.path(), "token", TOKEN);
    let (cert, key) = &pki.agent;
    let flags = [
        "--tls-cert",
        s(cert),
        "--tls-key",
        s(key),
        "--tls-ca",
        s(&pki.ca),
        "--token-file",
        s(&tok),
    ];
    let (ccert, ckey) = (&pki.client.0, &pki.client.1);
    let mut c = Cluster::new(3, &flags).with_client_transport(transport(
        Some(&tok),
        Some(&pki.ca),
        Some(ccert),
        Some(ckey),
    ));
    for a in &mut c.agents {
        a.start();
    }
    c.ready(3).await;
    let got: Value = c.client().call("echo", json!(["tls", 1])).await.unwrap();
    assert_eq!(got, json!(["tls", 1]));

    let addr = c.agents[0].addr.clone();
    // No client certificate: the handshake is refused (mutual TLS).
    let no_cert = transport(Some(&tok), Some(&pki.ca), None, None);
    assert!(status_code(&no_cert, &addr).await.is_err());
    // Plain TCP to a TLS port fails.
    let plain = transport(Some(&tok), None, None, None);
    assert!(status_code(&plain, &addr).await.is_err());
    // A client that trusts another CA refuses the agents' certificate.
    let other_dir = secrets.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = make_pki(&other_dir);
    let wrong_ca = transport(Some(&tok), Some(&other.ca), Some(ccert), Some(ckey));
    assert!(status_code(&wrong_ca, &addr).await.is_err());

    let env = [
        ("MOZEN_TOKEN_FILE", tok.as_path()),
        ("MOZEN_TLS_CA", &pki.ca),
        ("MOZEN_TLS_CERT", ccert),
        ("MOZEN_TLS_KEY", ckey),
    ];
    let st: Value = serde_json::from_str(&cli_ok(&c, &env, &["status", "--json"])).unwrap();
    assert_eq!(st["members"].as_array().map(Vec::len), Some(3), "{st}");
}
