//! Who may talk to an agent: the cluster token and TLS, on both gRPC services.
//!
//! - Server side, [`Guard`] runs before every RPC of the `Raft` and `Mozen` services: with a
//!   token configured, a request must carry `authorization: Bearer <token>`; the comparison is
//!   constant-time (both sides are hashed with BLAKE3, whose `Hash` equality is constant-time,
//!   so neither the content nor the length leaks). The guard also applies the test-only fault
//!   table ([`crate::faults`]).
//! - Client side, [`ClientTransport`] builds channels: `http` or `https` with the cluster CA,
//!   a client certificate when mutual TLS is on, and [`Credentials`] that add the token and,
//!   for agents, the sender's node id (`mozen-node-id`) to every request.
//!
//! TLS rules (see docs/operations.md): an agent with TLS has a certificate, its key and the
//! cluster CA. The CA verifies the peers it dials and the clients that dial it: the server
//! demands a client certificate signed by that CA (mutual TLS). Clients (CLI, console,
//! library) trust `--tls-ca` and present `--tls-cert`/`--tls-key`.

use crate::config::ConfigError;
use crate::faults::Faults;
use mozen_model::NodeId;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Status};

/// Metadata header naming the agent that sends a request (absent from non-agent clients).
pub const NODE_ID_HEADER: &str = "mozen-node-id";

/// Shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// The cluster secret. Its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Checks a token's text: visible ASCII (it travels in an HTTP header), long enough.
    pub fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token has {} characters; at least {MIN_TOKEN_LEN} are needed (e.g. `openssl rand -hex 32`)",
                t.len()
            ));
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the token contains {c:?}; only visible ASCII characters are allowed"
            ));
        }
        Ok(Token(t.into()))
    }

    /// Reads a token file for `--{flag}`.
    pub fn read(flag: &str, path: &Path) -> Result<Token, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("--{flag} '{}': cannot read: {e}", path.display())))?;
        Token::new(&text).map_err(|e| ConfigError(format!("--{flag} '{}': {e}", path.display())))
    }
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
                .map(|p| Token::read("token-file", p))
                .transpose()?,
            tls: TlsFiles::load(ca, cert, key)?,
        })
    }

    /// The transport this security setting gives a client.
    pub fn client(&self) -> ClientTransport {
        ClientTransport {
            token: self.token.clone(),
            tls: self.tls.as_ref().map(TlsFiles::client_config),
            node: None,
        }
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

/// A channel whose requests carry [`Credentials`].
pub type AuthChannel = InterceptedService<Channel, Credentials>;

/// Builds client channels: scheme, TLS, token and sender id.
#[derive(Clone, Debug, Default)]
pub struct ClientTransport {
    token: Option<Token>,
    tls: Option<ClientTlsConfig>,
    node: Option<NodeId>,
}

impl ClientTransport {
    /// Marks every request as sent by agent `id` (used by the fault control).
    pub fn from_node(mut self, id: NodeId) -> Self {
        self.node = Some(id);
        self
    }

    /// A lazily connecting channel to `addr` (HOST:PORT).
    pub fn channel(&self, addr: &str) -> Result<AuthChannel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        Ok(InterceptedService::new(
            ep.connect_lazy(),
            self.credentials(),
        ))
    }

    fn credentials(&self) -> Credentials {
        Credentials {
            authorization: self
                .token
                .as_ref()
                .and_then(|t| format!("Bearer {}", t.0).parse().ok()),
            node: self.node.and_then(|n| n.to_string().parse().ok()),
        }
    }
}

/// Adds the token and the sender's node id to each outgoing request.
#[derive(Clone, Debug)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
    node: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(n) = &self.node {
            req.metadata_mut().insert(NODE_ID_HEADER, n.clone());
        }
        Ok(req)
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
            token: token.map(|t| blake3::hash(t.0.as_bytes())),
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
            return Err(Status::unavailable(format!(
                "MZ-PARTITIONED: node {} is cut off from node {peer} by the fault control",
                self.me
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
            Some(_) => Err(Status::unauthenticated(
                "MZ-UNAUTHENTICATED: the token does not match this cluster's; check --token-file",
            )),
            None => Err(Status::unauthenticated(
                "MZ-UNAUTHENTICATED: this cluster requires a token: pass --token-file PATH (MOZEN_TOKEN_FILE for the mozen CLI)",
            )),
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
    fn credentials_carry_token_and_node() {
        let t = Security {
            token: Some(Token::new("0123456789abcdef").unwrap()),
            tls: None,
        }
        .client()
        .from_node(7);
        let r = t.credentials().call(Request::new(())).unwrap();
        assert_eq!(
            r.metadata().get("authorization").unwrap(),
            "Bearer 0123456789abcdef"
        );
        assert_eq!(r.metadata().get(NODE_ID_HEADER).unwrap(), "7");
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
    fn tokens_are_checked() {
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
        assert!(
            Token::new("0123456789abcdef 0123")
                .unwrap_err()
                .contains("' '")
        );
        assert_eq!(
            format!("{:?}", Token::new("0123456789abcdef\n").unwrap()),
            "Token(<redacted>)"
        );
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
