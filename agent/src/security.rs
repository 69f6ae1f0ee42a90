//! Who may talk to an agent: the cluster token and TLS, on both gRPC services.
//!
//! - Server side, [`Guard`] runs before every RPC of the `Raft`, `Mozen` and `MozenWorker`
//!   services and of server reflection (gRPC health is exempt, see docs/operations.md), as the
//!   tower wrapper [`Gated`] around each service: with a token configured, a request must carry
//!   `authorization: Bearer <token>`; the comparison is constant-time (both sides are hashed
//!   with BLAKE3, whose `Hash` equality is constant-time, so neither the content nor the length
//!   leaks). With an access file ([`AccessList`], `--access-file`) each token grants its own
//!   [`Roles`] and name, and [`required`] (the one table of which RPC needs which role) decides
//!   before any handler runs; a credential named `node-N` speaks only for node N ([`Speaker`]).
//!   The guard also applies the test-only fault table ([`crate::faults`]).
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
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http::HeaderMap;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
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

/// Checks an agent's own token against its access file: it must be listed with the peer or
/// worker role (its peers and the leader are called with it), and a credential bound to a
/// node must be bound to this one.
pub fn check_own_token(
    me: NodeId,
    token: Option<&Token>,
    access: &AccessList,
) -> Result<(), ConfigError> {
    let Some(token) = token else {
        return Err(ConfigError(
            "--access-file needs --token-file: the agent's own token, listed in the access file \
             with the peer role (voters) or the worker role"
                .into(),
        ));
    };
    let Some(g) = access.find(token.expose()) else {
        return Err(ConfigError(
            "--token-file: this agent's token is not in --access-file; add its line \
             (`mozen-agent token --role peer --name node-ID` mints one)"
                .into(),
        ));
    };
    if !g.roles.contains(Roles::WORKER) {
        return Err(ConfigError(format!(
            "--token-file: this agent's token is listed in --access-file as '{}' with the {} role, \
             but an agent needs peer (voters) or worker",
            g.name,
            g.roles.names()
        )));
    }
    if let Some(n) = g.node
        && n != me
    {
        return Err(ConfigError(format!(
            "--token-file: this agent's token is bound to node {n} ('{}' in --access-file), \
             but this is node {me}",
            g.name
        )));
    }
    Ok(())
}

/// A new random token: 32 bytes from the operating system, 64 hex digits.
pub fn mint_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// How an agent or client secures its connections.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// The token this agent or client sends.
    pub token: Option<Token>,
    pub tls: Option<TlsFiles>,
    /// The credentials an agent accepts (`--access-file`); without it, `token` grants every
    /// role (the single cluster token, kept for one release).
    pub access: Option<Arc<AccessList>>,
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
            access: None,
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

    /// No role.
    pub const NONE: Roles = Roles(0);

    /// `self` with what its roles imply: a peer is also a worker (voters run work too) and a
    /// client (functions call functions); a worker is a client (child calls); an operator is
    /// a client (it reads what it operates on).
    pub const fn implied(self) -> Roles {
        let mut r = self;
        if r.contains(Roles::PEER) {
            r = r.union(Roles::WORKER);
        }
        if r.contains(Roles::WORKER) || r.contains(Roles::OPERATOR) {
            r = r.union(Roles::CLIENT);
        }
        r
    }

    /// The role named `s` (`peer`, `worker`, `operator`, `client`).
    pub fn parse(s: &str) -> Option<Roles> {
        ROLE_NAMES.iter().find(|(n, _)| *n == s).map(|&(_, r)| r)
    }

    /// The names of the roles held, comma-separated (`none` for none).
    pub fn names(self) -> String {
        let names: Vec<&str> = ROLE_NAMES
            .iter()
            .filter(|(_, r)| self.contains(*r))
            .map(|(n, _)| *n)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

/// Each role's name in the access file and in messages.
const ROLE_NAMES: [(&str, Roles); 4] = [
    ("peer", Roles::PEER),
    ("worker", Roles::WORKER),
    ("operator", Roles::OPERATOR),
    ("client", Roles::CLIENT),
];

/// The role an RPC needs, by its gRPC path (`/package.Service/Method`): the one table of who
/// may call what. Raft: peers. `MozenWorker`, and the worker RPCs still on `Mozen` for one
/// release: workers. Node operations: operators. Everything else (calls, reads, reflection):
/// clients.
pub fn required(path: &str) -> Roles {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        mozen_proto::raft_server::SERVICE_NAME => Roles::PEER,
        mozen_proto::mozen_worker_server::SERVICE_NAME => Roles::WORKER,
        mozen_proto::mozen_server::SERVICE_NAME => match method {
            "Join" | "Heartbeat" | "Work" | "Complete" | "Park" => Roles::WORKER,
            "NodeOp" | "AddNode" => Roles::OPERATOR,
            _ => Roles::CLIENT,
        },
        _ => Roles::CLIENT,
    }
}

/// Longest credential name in the access file.
pub const MAX_NAME: usize = MAX_CLIENT_ID;

/// One credential of the access file: the BLAKE3 of its token, what it may do, who it is.
#[derive(Clone, Debug)]
pub struct Grant {
    hash: blake3::Hash,
    pub roles: Roles,
    pub name: Arc<str>,
    /// The node a peer or worker credential named `node-N` may speak for (and no other).
    pub node: Option<NodeId>,
}

/// The credentials an agent accepts (`--access-file`): lines of
/// `<role>[,<role>...] <name> <blake3-hex-of-token>`, `#` comments and blank lines ignored.
/// Tokens are kept only as hashes, so the file grants nothing to whoever reads it.
#[derive(Clone, Debug)]
pub struct AccessList {
    grants: Vec<Grant>,
}

impl AccessList {
    /// Reads and checks `--access-file`.
    pub fn read(path: &Path) -> Result<AccessList, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "--access-file '{}': cannot read: {e}",
                path.display()
            ))
        })?;
        AccessList::parse(&text)
            .map_err(|e| ConfigError(format!("--access-file '{}': {e}", path.display())))
    }

    /// Parses the text of an access file; an error names the line.
    pub fn parse(text: &str) -> Result<AccessList, String> {
        let mut grants: Vec<Grant> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [roles, name, hash] = fields[..] else {
                return Err(format!(
                    "line {n}: expected '<role>[,<role>...] <name> <blake3-hex>', got {} field(s); \
                     `mozen-agent token --role ROLE --name NAME` prints such a line",
                    fields.len()
                ));
            };
            let mut granted = Roles::NONE;
            for r in roles.split(',') {
                match Roles::parse(r) {
                    Some(r) => granted = granted.union(r),
                    None => {
                        return Err(format!(
                            "line {n}: unknown role '{r}' (roles: peer, worker, operator, client)"
                        ));
                    }
                }
            }
            if !valid_name(name) {
                return Err(format!(
                    "line {n}: name '{name}': at most {MAX_NAME} bytes of letters, digits and -_.@:"
                ));
            }
            let hash = blake3::Hash::from_hex(hash).map_err(|_| {
                format!("line {n}: '{hash}' is not a BLAKE3 hash (64 hex digits) of a token")
            })?;
            if let Some(g) = grants.iter().find(|g| g.hash == hash) {
                return Err(format!(
                    "line {n}: the same token as '{}' on an earlier line; mint another token",
                    g.name
                ));
            }
            let node = name
                .strip_prefix("node-")
                .and_then(|id| id.parse::<NodeId>().ok())
                .filter(|id| *id > 0)
                .filter(|_| granted.contains(Roles::WORKER) || granted.contains(Roles::PEER));
            grants.push(Grant {
                hash,
                roles: granted.implied(),
                name: Arc::from(name),
                node,
            });
        }
        if grants.is_empty() {
            return Err("no credential: the file lists no line".into());
        }
        Ok(AccessList { grants })
    }

    /// The credential whose token is `token`. Every line is compared (in constant time) so the
    /// time taken does not tell which line, if any, matched.
    pub fn find(&self, token: &str) -> Option<&Grant> {
        let given = blake3::hash(token.as_bytes());
        let mut found = None;
        for g in &self.grants {
            if g.hash == given {
                found = Some(g);
            }
        }
        found
    }

    /// The access-file line granting `roles` to `name` with `token`.
    pub fn line(roles: &str, name: &str, token: &str) -> String {
        format!("{roles} {name} {}", blake3::hash(token.as_bytes()).to_hex())
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
}

/// Who speaks on a worker RPC: which nodes the caller may name in its requests. Placed in the
/// request's extensions by the guard; the leader's own worker speaks as [`Speaker::local`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Speaker {
    pub name: Arc<str>,
    /// The node its credential is bound to (`node-N`): it speaks for no other.
    pub bound: Option<NodeId>,
    /// The `mozen-node-id` header the request carried: a request about another node is refused.
    pub header: Option<NodeId>,
}

impl Speaker {
    /// This agent's own worker, called in process.
    pub fn local(me: NodeId) -> Speaker {
        Speaker {
            name: Arc::from(format!("node-{me}")),
            bound: Some(me),
            header: Some(me),
        }
    }

    /// The speaker of `req` (unbound when no guard ran, as in unit tests).
    pub fn of<T>(req: &Request<T>) -> Speaker {
        req.extensions()
            .get::<Speaker>()
            .cloned()
            .unwrap_or_else(|| Speaker {
                name: Caller::of(req).name,
                bound: None,
                header: None,
            })
    }

    /// Whether it may speak for `node`.
    pub fn may_speak_for(&self, node: NodeId) -> bool {
        self.bound.is_none_or(|b| b == node) && self.header.is_none_or(|h| h == node)
    }

    /// `MZ-FORBIDDEN` unless it may speak for `node`; `what` names the RPC.
    pub fn check(&self, what: &str, node: NodeId) -> Result<(), Status> {
        if self.may_speak_for(node) {
            return Ok(());
        }
        Err(status(
            Code::Forbidden,
            format_args!("{what} for node {node}: {}", self.describe()),
        ))
    }

    /// Who it is, for messages and events.
    pub fn describe(&self) -> String {
        let mut s = format!("credential '{}'", self.name);
        if let Some(b) = self.bound {
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!(" speaks only for node {b}"));
        } else if let Some(h) = self.header {
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!(" sent as node {h}"));
        }
        s
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
    client_id_of(req.metadata().as_ref())
}

fn client_id_of(headers: &HeaderMap) -> Result<Option<&str>, Status> {
    let Some(v) = headers.get(CLIENT_ID_HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if valid_name(s) => Ok(Some(s)),
        _ => Err(status(
            Code::BadArguments,
            format_args!(
                "header {CLIENT_ID_HEADER}: at most {MAX_CLIENT_ID} bytes of letters, digits and -_.@:"
            ),
        )),
    }
}

/// How the guard authenticates.
#[derive(Clone)]
enum Auth {
    /// No token: development on loopback (or `--insecure`); every caller has every role.
    Open,
    /// The single cluster token (BLAKE3 of it), granting every role: the scheme before access
    /// files, kept for one release.
    Single(blake3::Hash),
    /// Scoped tokens (`--access-file`).
    Access(Arc<AccessList>),
}

/// Runs before every RPC an agent serves: the fault table, then the credential, then the role
/// the RPC needs ([`required`]).
#[derive(Clone)]
pub struct Guard {
    auth: Auth,
    faults: Option<Arc<Faults>>,
    me: NodeId,
}

impl Guard {
    /// A guard checking the single cluster `token` (every role), or none.
    pub fn new(me: NodeId, token: Option<&Token>, faults: Option<Arc<Faults>>) -> Guard {
        Guard {
            auth: match token {
                Some(t) => Auth::Single(blake3::hash(t.expose().as_bytes())),
                None => Auth::Open,
            },
            faults,
            me,
        }
    }

    /// The same guard with scoped tokens: `access` replaces the single token when given.
    pub fn with_access(mut self, access: Option<Arc<AccessList>>) -> Guard {
        if let Some(a) = access {
            self.auth = Auth::Access(a);
        }
        self
    }

    /// Admits a request to `path` (None: no role needed) with `headers`: who calls, and for
    /// which nodes it speaks; else the refusal.
    pub fn admit(
        &self,
        path: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(Caller, Speaker), Status> {
        let header_node = headers
            .get(NODE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok());
        if let Some(faults) = &self.faults
            && let Some(peer) = header_node
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
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let missing = || {
            status(
                Code::Unauthenticated,
                "this cluster requires a token: pass --token-file PATH (MOZEN_TOKEN_FILE for the mozen CLI)",
            )
        };
        let (roles, name, bound) = match &self.auth {
            Auth::Open => (Roles::ALL, None, None),
            Auth::Single(want) => match given {
                Some(t) if blake3::hash(t.as_bytes()) == *want => (Roles::ALL, None, None),
                Some(_) => {
                    return Err(status(
                        Code::Unauthenticated,
                        "the token does not match this cluster's; check --token-file",
                    ));
                }
                None => return Err(missing()),
            },
            Auth::Access(list) => match given.map(|t| list.find(t)) {
                Some(Some(g)) => (g.roles, Some(g.name.clone()), g.node),
                Some(None) => {
                    return Err(status(
                        Code::Unauthenticated,
                        "the token is not one this cluster grants (not in its access file); check --token-file",
                    ));
                }
                None => return Err(missing()),
            },
        };
        let name = match name {
            Some(n) => n,
            None => Arc::from(client_id_of(headers)?.unwrap_or("anonymous")),
        };
        if let Some(path) = path {
            let need = required(path);
            if !roles.contains(need) {
                return Err(status(
                    Code::Forbidden,
                    format_args!(
                        "{path} needs the {} role; credential '{name}' has {}",
                        need.names(),
                        roles.names()
                    ),
                ));
            }
        }
        if let (Some(b), Some(h)) = (bound, header_node)
            && b != h
        {
            return Err(status(
                Code::Forbidden,
                format_args!(
                    "credential '{name}' speaks only for node {b}, but the request says {NODE_ID_HEADER}: {h}"
                ),
            ));
        }
        let speaker = Speaker {
            name: name.clone(),
            bound,
            header: header_node,
        };
        Ok((Caller { roles, name }, speaker))
    }
}

/// A gRPC service behind the [`Guard`]: each request is admitted for its path (credential and
/// role) before the service sees it, with its [`Caller`] and [`Speaker`] in its extensions;
/// a refusal is answered here.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    guard: Guard,
}

impl<S> Gated<S> {
    pub fn new(inner: S, guard: Guard) -> Gated<S> {
        Gated { inner, guard }
    }
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Gated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.guard.admit(Some(req.uri().path()), req.headers()) {
            Ok((caller, speaker)) => {
                req.extensions_mut().insert(caller);
                req.extensions_mut().insert(speaker);
                // The service polled ready is the one that takes the request (tower's rule).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(refused) => {
                let res = refused.into_http::<tonic::body::Body>();
                Box::pin(async move { Ok(res) })
            }
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

    /// What the guard makes of `r` before any role check (no path).
    fn admitted(g: &Guard, r: Request<()>) -> Result<(Caller, Speaker), Status> {
        g.admit(None, r.metadata().as_ref())
    }

    #[test]
    fn guard_checks_the_token() {
        let token = Token::new("0123456789abcdef-secret").unwrap();
        let g = Guard::new(1, Some(&token), None);
        assert!(admitted(&g, request(Some("Bearer 0123456789abcdef-secret"))).is_ok());
        let wrong = admitted(&g, request(Some("Bearer 0123456789abcdef-other"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(wrong.message().contains("does not match"));
        let missing = admitted(&g, request(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("requires a token"));
        let open = Guard::new(1, None, None);
        assert!(admitted(&open, request(None)).is_ok());
    }

    const ACCESS: &str = "\
# roles name hash
peer node-1 {p1}
worker,client builder {w}   # an unbound worker
client alice {c}
operator ops {o}
";

    fn tok(n: &str) -> String {
        format!("0123456789abcdef-{n}")
    }

    fn access() -> AccessList {
        let h = |n: &str| blake3::hash(tok(n).as_bytes()).to_hex().to_string();
        let text = ACCESS
            .replace("{p1}", &h("p1"))
            .replace("{w}", &h("w"))
            .replace("{c}", &h("c"))
            .replace("{o}", &h("o"));
        AccessList::parse(&text).unwrap()
    }

    fn headers(token: &str, node: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        if let Some(n) = node {
            h.insert(NODE_ID_HEADER, n.to_string().parse().unwrap());
        }
        h
    }

    #[test]
    fn roles_imply_what_they_need() {
        assert_eq!(
            Roles::PEER.implied(),
            Roles::PEER.union(Roles::WORKER).union(Roles::CLIENT)
        );
        assert_eq!(Roles::WORKER.implied(), Roles::WORKER.union(Roles::CLIENT));
        assert_eq!(
            Roles::OPERATOR.implied(),
            Roles::OPERATOR.union(Roles::CLIENT)
        );
        assert_eq!(Roles::CLIENT.implied(), Roles::CLIENT);
        assert!(!Roles::WORKER.implied().contains(Roles::PEER));
        assert!(!Roles::OPERATOR.implied().contains(Roles::WORKER));
        assert_eq!(Roles::ALL.names(), "peer,worker,operator,client");
        assert_eq!(Roles::parse("operator"), Some(Roles::OPERATOR));
        assert_eq!(Roles::parse("admin"), None);
    }

    #[test]
    fn every_rpc_has_its_audience() {
        assert_eq!(required("/mozen.v1.Raft/Vote"), Roles::PEER);
        assert_eq!(required("/mozen.v1.Raft/AppendStream"), Roles::PEER);
        assert_eq!(required("/mozen.v1.MozenWorker/Complete"), Roles::WORKER);
        for m in ["Join", "Heartbeat", "Work", "Complete", "Park"] {
            assert_eq!(required(&format!("/mozen.v1.Mozen/{m}")), Roles::WORKER);
        }
        assert_eq!(required("/mozen.v1.Mozen/NodeOp"), Roles::OPERATOR);
        assert_eq!(required("/mozen.v1.Mozen/AddNode"), Roles::OPERATOR);
        assert_eq!(required("/mozen.v1.Mozen/Call"), Roles::CLIENT);
        assert_eq!(required("/mozen.v1.Mozen/Status"), Roles::CLIENT);
        assert_eq!(
            required("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Roles::CLIENT
        );
    }

    #[test]
    fn access_file_lines_are_checked_and_named() {
        let a = access();
        let p = a.find(&tok("p1")).unwrap();
        assert_eq!((p.name.as_ref(), p.node), ("node-1", Some(1)));
        assert!(
            p.roles
                .contains(Roles::PEER.union(Roles::WORKER).union(Roles::CLIENT))
        );
        let w = a.find(&tok("w")).unwrap();
        assert_eq!((w.name.as_ref(), w.node), ("builder", None));
        assert!(!w.roles.contains(Roles::PEER));
        assert!(a.find(&tok("nobody")).is_none());
        let h = blake3::hash(b"x").to_hex();
        let bad = |text: &str| AccessList::parse(text).unwrap_err();
        assert!(bad(&format!("# c\n\nclient alice {h} extra")).starts_with("line 3: expected"));
        assert!(
            bad(&format!("client alice {h}\nroot bob {h}"))
                .starts_with("line 2: unknown role 'root'")
        );
        assert!(bad("client alice 1234").starts_with("line 1: '1234' is not a BLAKE3 hash"));
        assert!(bad(&format!("client al ice! {h}")).starts_with("line 1: expected"));
        assert!(bad(&format!("client al!ce {h}")).starts_with("line 1: name 'al!ce'"));
        assert!(
            bad(&format!("client a {h}\nworker b {h}"))
                .starts_with("line 2: the same token as 'a'")
        );
        assert!(bad("# only comments\n").contains("no credential"));
        // An operator or client named node-N is not bound: binding is for agents.
        let op = AccessList::parse(&format!("operator node-2 {h}")).unwrap();
        assert_eq!(op.grants[0].node, None);
        assert_eq!(
            AccessList::line("client", "alice", "t"),
            format!("client alice {}", blake3::hash(b"t").to_hex())
        );
    }

    #[test]
    fn scoped_tokens_get_their_roles_and_names() {
        let g = Guard::new(1, None, None).with_access(Some(Arc::new(access())));
        let refused =
            |path: &str, token: &str| g.admit(Some(path), &headers(token, None)).unwrap_err();
        let e = refused("/mozen.v1.Raft/Vote", &tok("c"));
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().starts_with("MZ-FORBIDDEN: /mozen.v1.Raft/Vote needs the peer role; credential 'alice' has client"), "{e}");
        for path in [
            "/mozen.v1.MozenWorker/Complete",
            "/mozen.v1.Mozen/Join",
            "/mozen.v1.Mozen/NodeOp",
        ] {
            assert_eq!(
                refused(path, &tok("c")).code(),
                tonic::Code::PermissionDenied,
                "{path}"
            );
        }
        assert_eq!(
            refused("/mozen.v1.Raft/AppendEntries", &tok("w")).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            refused("/mozen.v1.Mozen/NodeOp", &tok("w")).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            refused("/mozen.v1.Mozen/Call", &tok("zz")).code(),
            tonic::Code::Unauthenticated
        );
        let (caller, _) = g
            .admit(Some("/mozen.v1.Mozen/Call"), &headers(&tok("c"), None))
            .unwrap();
        assert_eq!(caller.name.as_ref(), "alice");
        assert!(
            g.admit(Some("/mozen.v1.Mozen/NodeOp"), &headers(&tok("o"), None))
                .is_ok()
        );
        let (_, s) = g
            .admit(Some("/mozen.v1.Raft/Vote"), &headers(&tok("p1"), Some(1)))
            .unwrap();
        assert_eq!(s.bound, Some(1));
        assert!(s.may_speak_for(1) && !s.may_speak_for(2));
        let e = g
            .admit(Some("/mozen.v1.Raft/Vote"), &headers(&tok("p1"), Some(2)))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let (_, s) = g
            .admit(
                Some("/mozen.v1.MozenWorker/Complete"),
                &headers(&tok("w"), Some(5)),
            )
            .unwrap();
        assert!(
            s.may_speak_for(5) && !s.may_speak_for(6),
            "the header binds an unbound credential's request"
        );
    }

    #[test]
    fn guard_refuses_blocked_peers() {
        let faults = Arc::new(Faults::default());
        faults.set([2].into());
        let g = Guard::new(1, None, Some(faults));
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(NODE_ID_HEADER, "2".parse().unwrap());
        assert_eq!(
            admitted(&g, r).unwrap_err().code(),
            tonic::Code::Unavailable
        );
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(NODE_ID_HEADER, "3".parse().unwrap());
        assert!(admitted(&g, r).is_ok());
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
