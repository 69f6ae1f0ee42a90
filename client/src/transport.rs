//! How a client reaches a secured cluster: the cluster token and TLS on its channels.
//!
//! [`ClientTransport`] builds channels: `http`, or `https` with the cluster CA and, when the
//! agents demand mutual TLS, a client certificate; its [`Credentials`] add the token and, for
//! agents calling each other, the sender's node id (`mozen-node-id`) to every request.
//! [`TlsFiles`] reads the PEM files the TLS flags name, for clients and agents alike; with the
//! `clap` feature, [`ClientArgs`] are the security flags of a client program. The server side
//! (checking the token, serving TLS) belongs to the agent.

use mozen_model::NodeId;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// Metadata header naming the agent that sends a request (absent from non-agent clients).
pub const NODE_ID_HEADER: &str = "mozen-node-id";

/// Metadata header naming the client identity, for admission and fair share when the
/// credential does not name one (see docs/operations.md#limits).
pub const CLIENT_ID_HEADER: &str = "mozen-client-id";

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

    /// Reads a token file for `--{flag}`; the error quotes the flag and the path.
    pub fn read(flag: &str, path: &Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--{flag} '{}': cannot read: {e}", path.display()))?;
        Token::new(&text).map_err(|e| format!("--{flag} '{}': {e}", path.display()))
    }

    /// The secret itself, for the request header and the server's comparison; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Renders an error with its causes (tonic's transport errors say little at the top).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--{flag} '{}': cannot read: {e}", path.display()))
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
    /// certificate + key pair. The client configuration is built once here so that a bad file
    /// is reported at startup (an agent also checks its server side: `mozen_agent::security`).
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<TlsFiles>, String> {
        let ca = match (ca, cert, key) {
            (None, None, None) => return Ok(None),
            (_, Some(c), None) => {
                return Err(format!(
                    "--tls-cert '{}' needs --tls-key (the certificate's private key)",
                    c.display()
                ));
            }
            (_, None, Some(k)) => {
                return Err(format!("--tls-key '{}' needs --tls-cert", k.display()));
            }
            (None, Some(c), Some(_)) => {
                return Err(format!(
                    "--tls-cert '{}' needs --tls-ca: the CA certificate that signed the cluster's certificates",
                    c.display()
                ));
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
                format!(
                    "--tls-ca '{}' / --tls-cert / --tls-key: unusable: {}",
                    ca.display(),
                    chain(&e)
                )
            })?;
        Ok(Some(files))
    }

    /// The certificate and key, when there are some.
    pub fn identity(&self) -> Option<Identity> {
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
}

/// The security flags of a client program (`mozen`), each with an environment variable.
#[cfg(feature = "clap")]
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientArgs {
    /// File holding this client's token: the cluster token, or with an access file a token
    /// with the client role (operator for node operations).
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
    /// This client's identity for admission and fair share (sent as mozen-client-id; up to 64
    /// letters, digits and -_.@:). Without it the agent counts the caller as "anonymous".
    #[arg(long, global = true, env = "MOZEN_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
}

#[cfg(feature = "clap")]
impl ClientArgs {
    /// Reads and checks the files; errors name the flag and the path.
    pub fn transport(&self) -> Result<ClientTransport, String> {
        let token = self
            .token_file
            .as_deref()
            .map(|p| Token::read("token-file", p))
            .transpose()?;
        let tls = TlsFiles::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?;
        let t = ClientTransport::new(token, tls.as_ref().map(TlsFiles::client_config));
        match &self.client_id {
            Some(id) => t.with_client_id(id),
            None => Ok(t),
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
    client_id: Option<MetadataValue<Ascii>>,
}

impl ClientTransport {
    /// Sends `token` with every request, and speaks TLS when `tls` is given (the cluster CA and,
    /// for mutual TLS, the client's identity).
    pub fn new(token: Option<Token>, tls: Option<ClientTlsConfig>) -> Self {
        ClientTransport {
            token,
            tls,
            node: None,
            client_id: None,
        }
    }

    /// Names this client `id` in every request (the `mozen-client-id` header); errors say why
    /// an id cannot be sent.
    pub fn with_client_id(mut self, id: &str) -> Result<Self, String> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
        if !ok {
            return Err(format!(
                "--client-id '{id}': expected 1 to 64 letters, digits and -_.@:"
            ));
        }
        self.client_id = id.parse().ok();
        Ok(self)
    }

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

    /// What every request on this transport's channels carries.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            authorization: self
                .token
                .as_ref()
                .and_then(|t| format!("Bearer {}", t.0).parse().ok()),
            node: self.node.and_then(|n| n.to_string().parse().ok()),
            client_id: self.client_id.clone(),
        }
    }
}

/// Adds the token and the sender's node id to each outgoing request.
#[derive(Clone, Debug)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
    node: Option<MetadataValue<Ascii>>,
    client_id: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(n) = &self.node {
            req.metadata_mut().insert(NODE_ID_HEADER, n.clone());
        }
        if let Some(c) = &self.client_id {
            req.metadata_mut().insert(CLIENT_ID_HEADER, c.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_carry_token_and_node() {
        let t =
            ClientTransport::new(Some(Token::new("0123456789abcdef").unwrap()), None).from_node(7);
        let r = t.credentials().call(Request::new(())).unwrap();
        assert_eq!(
            r.metadata().get("authorization").unwrap(),
            "Bearer 0123456789abcdef"
        );
        assert_eq!(r.metadata().get(NODE_ID_HEADER).unwrap(), "7");
        let plain = ClientTransport::default().credentials();
        let r = plain.clone().call(Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
        assert!(r.metadata().get(NODE_ID_HEADER).is_none());
        assert!(r.metadata().get(CLIENT_ID_HEADER).is_none());
        let named = ClientTransport::default().with_client_id("team-a").unwrap();
        let r = named.credentials().call(Request::new(())).unwrap();
        assert_eq!(r.metadata().get(CLIENT_ID_HEADER).unwrap(), "team-a");
        assert!(ClientTransport::default().with_client_id("a b").is_err());
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
        let missing = Token::read("token-file", Path::new("/nonexistent")).unwrap_err();
        assert!(
            missing.starts_with("--token-file '/nonexistent': cannot read"),
            "{missing}"
        );
    }
}
