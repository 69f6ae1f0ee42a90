//! Who may talk to an agent: the cluster token and TLS, on both gRPC services.
//!
//! - Server side, [`Guard`] runs before every RPC of the `Raft` and `Mozen` services: with a
//!   token configured, a request must carry `authorization: Bearer <token>`; the comparison is
//!   constant-time (both sides are hashed with BLAKE3, whose `Hash` equality is constant-time,
//!   so neither the content nor the length leaks). The guard also applies the test-only fault
//!   table ([`crate::faults`]).
//! - Client side, [`ClientTransport`] builds channels: `http` or `https` with the cluster CA,
//!   a client certificate when mutual TLS is on, and [`Credentials`] that add the token and,
//!   for agents, the sender's node id (`mozen-node-id`) to every request. It lives in
//!   [`mozen_client::transport`] and is re-exported here with [`Token`]; this module reads the
//!   flags into a [`Security`] and keeps the server side.
//!
//! TLS rules (see docs/operations.md): an agent with TLS has a certificate, its key and the
//! cluster CA. The CA verifies the peers it dials and the clients that dial it: the server
//! demands a client certificate signed by that CA (mutual TLS). Clients (CLI, console,
//! library) trust `--tls-ca` and present `--tls-cert`/`--tls-key`.

use crate::error::ConfigError;
use crate::faults::Faults;
use mozen_model::{Code, NodeId};
use std::path::Path;
use std::sync::Arc;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

pub use mozen_client::transport::{
    AuthChannel, ClientTransport, Credentials, MIN_TOKEN_LEN, NODE_ID_HEADER, Token,
};

/// Reads a token file for `--{flag}`.
pub fn read_token(flag: &str, path: &Path) -> Result<Token, ConfigError> {
    Token::read(flag, path).map_err(ConfigError)
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError(format!("--{flag} '{}': cannot read: {e}", path.display())))
}

/// Renders an error with its causes (tonic's transport errors say little at the top).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// PEM material from `--tls-ca`, `--tls-cert`, `--tls-key`.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    /// Certificate and key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Reads and checks the three flags: none (plain TCP), or a CA with an optional
    /// certificate + key pair. Both the client and, with an identity, the server configuration
    /// are built once here so a bad file is reported at startup.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<TlsFiles>, ConfigError> {
        let ca = match (ca, cert, key) {
            (None, None, None) => return Ok(None),
            (_, Some(c), None) => {
                return Err(ConfigError(format!(
                    "--tls-cert '{}' needs --tls-key (the certificate's private key)",
                    c.display()
                )));
            }
            (_, None, Some(k)) => {
                return Err(ConfigError(format!(
                    "--tls-key '{}' needs --tls-cert",
                    k.display()
                )));
            }
            (None, Some(c), Some(_)) => {
                return Err(ConfigError(format!(
                    "--tls-cert '{}' needs --tls-ca: the CA certificate that signed the cluster's certificates",
                    c.display()
                )));
            }
            (Some(ca), _, _) => ca,
        };
        let files = TlsFiles {
            ca: read_pem("tls-ca", ca)?,
            identity: match (cert, key) {
                (Some(c), Some(k)) => Some((read_pem("tls-cert", c)?, read_pem("tls-key", k)?)),
                _ => None,
            },
        };
        Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(files.client_config())
            .map_err(|e| {
                ConfigError(format!(
                    "--tls-ca '{}' / --tls-cert / --tls-key: unusable: {}",
                    ca.display(),
                    chain(&e)
                ))
            })?;
        if let Some(server) = files.server_config() {
            Server::builder().tls_config(server).map_err(|e| {
                ConfigError(format!(
                    "--tls-cert / --tls-key: unusable as a server identity: {}",
                    chain(&e)
                ))
            })?;
        }
        Ok(Some(files))
    }

    fn identity(&self) -> Option<Identity> {
        self.identity
            .as_ref()
            .map(|(c, k)| Identity::from_pem(c, k))
    }

    /// Trusts the CA; presents the certificate when there is one.
    pub fn client_config(&self) -> ClientTlsConfig {
        let c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match self.identity() {
            Some(id) => c.identity(id),
            None => c,
        }
    }

    /// Serves with the certificate and demands client certificates signed by the CA.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        Some(
            ServerTlsConfig::new()
                .identity(self.identity()?)
                .client_ca_root(Certificate::from_pem(&self.ca)),
        )
    }
}

/// The security flags of a client program (`mozen`), each with an environment variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientArgs {
    /// File holding the cluster token.
    #[arg(long, global = true, env = "MOZEN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of the cluster: turns TLS on.
    #[arg(long, global = true, env = "MOZEN_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for clusters that demand one (mutual TLS).
    #[arg(long, global = true, env = "MOZEN_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "MOZEN_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl ClientArgs {
    /// Reads and checks the files.
    pub fn security(&self) -> Result<Security, ConfigError> {
        Security::for_client(
            self.token_file.as_deref(),
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

/// How an agent or client secures its connections.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub token: Option<Token>,
    pub tls: Option<TlsFiles>,
}

impl Security {
    /// Reads `--token-file` and the TLS flags of a client (CLI, console, library user).
    pub fn for_client(
        token_file: Option<&Path>,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Security, ConfigError> {
        Ok(Security {
            token: token_file
                .map(|p| read_token("token-file", p))
                .transpose()?,
            tls: TlsFiles::load(ca, cert, key)?,
        })
    }

    /// The transport this security setting gives a client.
    pub fn client(&self) -> ClientTransport {
        ClientTransport::new(
            self.token.clone(),
            self.tls.as_ref().map(TlsFiles::client_config),
        )
    }

    /// The gRPC server with TLS applied when configured.
    pub fn server(&self) -> Result<Server, String> {
        let builder = Server::builder();
        match self.tls.as_ref().and_then(TlsFiles::server_config) {
            Some(tls) => builder.tls_config(tls).map_err(|e| chain(&e)),
            None => Ok(builder),
        }
    }
}

/// Runs before every RPC an agent serves: the fault table, then the token.
#[derive(Clone)]
pub struct Guard {
    /// BLAKE3 of the expected token.
    token: Option<blake3::Hash>,
    faults: Option<Arc<Faults>>,
    me: NodeId,
}

impl Guard {
    pub fn new(me: NodeId, token: Option<&Token>, faults: Option<Arc<Faults>>) -> Guard {
        Guard {
            token: token.map(|t| blake3::hash(t.expose().as_bytes())),
            faults,
            me,
        }
    }
}

impl Interceptor for Guard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(faults) = &self.faults
            && let Some(peer) = req
                .metadata()
                .get(NODE_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<NodeId>().ok())
            && faults.blocks(peer)
        {
            return Err(Status::unavailable(Code::Partitioned.message(
                format_args!(
                    "node {} is cut off from node {peer} by the fault control",
                    self.me
                ),
            )));
        }
        let Some(want) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if blake3::hash(t.as_bytes()) == *want => Ok(req),
            Some(_) => Err(Status::unauthenticated(Code::Unauthenticated.message(
                "the token does not match this cluster's; check --token-file",
            ))),
            None => Err(Status::unauthenticated(Code::Unauthenticated.message(
                "this cluster requires a token: pass --token-file PATH (MOZEN_TOKEN_FILE for the mozen CLI)",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn guard_checks_the_token() {
        let token = Token::new("0123456789abcdef-secret").unwrap();
        let mut g = Guard::new(1, Some(&token), None);
        assert!(
            g.call(request(Some("Bearer 0123456789abcdef-secret")))
                .is_ok()
        );
        let wrong = g
            .call(request(Some("Bearer 0123456789abcdef-other")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(wrong.message().contains("does not match"));
        let missing = g.call(request(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("requires a token"));
        let mut open = Guard::new(1, None, None);
        assert!(open.call(request(None)).is_ok());
    }

    #[test]
    fn guard_refuses_blocked_peers() {
        let faults = Arc::new(Faults::default());
        faults.set([2].into());
        let mut g = Guard::new(1, None, Some(faults));
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(NODE_ID_HEADER, "2".parse().unwrap());
        assert_eq!(g.call(r).unwrap_err().code(), tonic::Code::Unavailable);
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(NODE_ID_HEADER, "3".parse().unwrap());
        assert!(g.call(r).is_ok());
    }

    #[test]
    fn tls_flags_go_together() {
        let p = Path::new("/nonexistent");
        assert!(TlsFiles::load(None, None, None).unwrap().is_none());
        assert!(
            TlsFiles::load(None, Some(p), None)
                .unwrap_err()
                .0
                .contains("needs --tls-key")
        );
        assert!(
            TlsFiles::load(None, Some(p), Some(p))
                .unwrap_err()
                .0
                .contains("needs --tls-ca")
        );
        assert!(
            TlsFiles::load(Some(p), None, None)
                .unwrap_err()
                .0
                .contains("cannot read")
        );
    }
}
