//! Who may talk to an agent: the cluster token and TLS, on both gRPC services.
//!
//! - Server side, [`Guard`] runs before every RPC of the `Raft` and `Mozen` services and of
//!   server reflection (gRPC health is exempt, see docs/operations.md): with a
//!   token configured, a request must carry `authorization: Bearer <token>`; the comparison is
//!   constant-time (both sides are hashed with BLAKE3, whose `Hash` equality is constant-time,
//!   so neither the content nor the length leaks). The guard also applies the test-only fault
//!   table ([`crate::faults`]).
//! - Client side, [`ClientTransport`] builds channels: `http` or `https` with the cluster CA,
//!   a client certificate when mutual TLS is on, and [`Credentials`] that add the token and,
//!   for agents, the sender's node id (`mozen-node-id`) to every request. It lives in
//!   [`mozen_client::transport`] and is re-exported here with [`Token`] and [`TlsFiles`]; this
//!   module reads the flags into a [`Security`] and keeps the server side.
//!
//! TLS rules (see docs/operations.md): an agent with TLS has a certificate, its key and the
//! cluster CA. The CA verifies the peers it dials and the clients that dial it: the server
//! demands a client certificate signed by that CA (mutual TLS). Clients (CLI, console,
//! library) trust `--tls-ca` and present `--tls-cert`/`--tls-key`.

use crate::error::ConfigError;
use crate::faults::Faults;
use mozen_client::transport::chain;
use mozen_model::{Code, NodeId};
use mozen_proto::status::status;
use std::path::Path;
use std::sync::Arc;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Server, ServerTlsConfig};
use tonic::{Request, Status};

pub use mozen_client::transport::{
    AuthChannel, ClientTransport, Credentials, MIN_TOKEN_LEN, NODE_ID_HEADER, TlsFiles, Token,
};

/// Reads a token file for `--{flag}`.
pub fn read_token(flag: &str, path: &Path) -> Result<Token, ConfigError> {
    Token::read(flag, path).map_err(ConfigError)
}

/// Reads and checks the TLS flags (see [`TlsFiles::load`]); with a certificate, also that it
/// serves as this agent's identity, so a bad file is reported at startup.
pub fn load_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = TlsFiles::load(ca, cert, key).map_err(ConfigError)?;
    if let Some(server) = files.as_ref().and_then(server_config) {
        Server::builder().tls_config(server).map_err(|e| {
            ConfigError(format!(
                "--tls-cert / --tls-key: unusable as a server identity: {}",
                chain(&e)
            ))
        })?;
    }
    Ok(files)
}

/// Serves with the certificate and demands client certificates signed by the CA.
pub fn server_config(files: &TlsFiles) -> Option<ServerTlsConfig> {
    Some(
        ServerTlsConfig::new()
            .identity(files.identity()?)
            .client_ca_root(Certificate::from_pem(&files.ca)),
    )
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
            tls: load_tls(ca, cert, key)?,
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
        match self.tls.as_ref().and_then(server_config) {
            Some(tls) => builder.tls_config(tls).map_err(|e| chain(&e)),
            None => Ok(builder),
        }
    }
}

/// Header a client may send to name itself (letters, digits, `-_.@:`, at most
/// [`MAX_CLIENT_ID`] bytes). It is the caller's identity for admission and fair share when its
/// credential does not name it (no token, or the single cluster token).
pub const CLIENT_ID_HEADER: &str = "mozen-client-id";

/// Longest client name kept; longer or malformed ones are refused.
pub const MAX_CLIENT_ID: usize = 64;

/// What a caller may do: the roles its credential grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// Raft RPCs between voters and learners.
    pub const PEER: Roles = Roles(1);
    /// Worker RPCs: join, heartbeat, the Work stream, completions, parking.
    pub const WORKER: Roles = Roles(2);
    /// Node operations.
    pub const OPERATOR: Roles = Roles(4);
    /// Calls and reads.
    pub const CLIENT: Roles = Roles(8);
    /// Everything: no token configured, or the single cluster token.
    pub const ALL: Roles = Roles(15);

    pub const fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    pub const fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Who is calling, as the [`Guard`] established it: placed in every request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub roles: Roles,
    /// The caller's identity for admission and fair share: the credential's name, else the
    /// `mozen-client-id` header, else "anonymous".
    pub name: Arc<str>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            roles: Roles::ALL,
            name: Arc::from("anonymous"),
        }
    }

    /// The caller of `req` (anonymous with every role when no guard ran, as in unit tests).
    pub fn of<T>(req: &Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous)
    }
}

/// The `mozen-client-id` header of `req`, checked: `Ok(None)` when absent.
pub fn client_id<T>(req: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(v) = req.metadata().get(CLIENT_ID_HEADER) else {
        return Ok(None);
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_CLIENT_ID
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
    };
    match v.to_str() {
        Ok(s) if ok(s) => Ok(Some(s)),
        _ => Err(status(
            Code::BadArguments,
            format_args!(
                "header {CLIENT_ID_HEADER}: at most {MAX_CLIENT_ID} bytes of letters, digits and -_.@:"
            ),
        )),
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
            return Err(status(
                Code::Partitioned,
                format_args!(
                    "node {} is cut off from node {peer} by the fault control",
                    self.me
                ),
            ));
        }
        let name: Arc<str> = Arc::from(client_id(&req)?.unwrap_or("anonymous"));
        let mut req = req;
        req.extensions_mut().insert(Caller {
            roles: Roles::ALL,
            name,
        });
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
            Some(_) => Err(status(
                Code::Unauthenticated,
                "the token does not match this cluster's; check --token-file",
            )),
            None => Err(status(
                Code::Unauthenticated,
                "this cluster requires a token: pass --token-file PATH (MOZEN_TOKEN_FILE for the mozen CLI)",
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
        assert!(load_tls(None, None, None).unwrap().is_none());
        assert!(
            load_tls(None, Some(p), None)
                .unwrap_err()
                .0
                .contains("needs --tls-key")
        );
        assert!(
            load_tls(None, Some(p), Some(p))
                .unwrap_err()
                .0
                .contains("needs --tls-ca")
        );
        assert!(
            load_tls(Some(p), None, None)
                .unwrap_err()
                .0
                .contains("cannot read")
        );
    }
}
