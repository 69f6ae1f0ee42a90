//! How the console gets into a secured cluster: the cluster token (sent as
//! `authorization: Bearer <token>` on every RPC) and TLS with the cluster CA and, for agents
//! that demand one, a client certificate. Same flags and environment variables as `mozen`;
//! the flags become a [`ClientTransport`] of mozen-client, which puts them on every channel.

use mozen_client::{ClientTransport, Token};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The console's security flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessArgs {
    /// File holding the cluster token.
    #[arg(long, env = "MOZEN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the cluster: turns TLS on.
    #[arg(long, env = "MOZEN_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for agents that demand one (mutual TLS).
    #[arg(long, env = "MOZEN_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "MOZEN_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--{flag} '{}': cannot read: {e}", path.display()))
}

impl AccessArgs {
    /// Reads the files; errors name the flag and the path.
    pub fn load(&self) -> Result<ClientTransport, String> {
        let token = self
            .token_file
            .as_deref()
            .map(|p| Token::read("token-file", p))
            .transpose()?;
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read("tls-cert", c)?,
                read("tls-key", k)?,
            )),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let tls = match (&self.tls_ca, identity) {
            (Some(ca), id) => {
                let cfg = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read("tls-ca", ca)?));
                Some(match id {
                    Some(id) => cfg.identity(id),
                    None => cfg,
                })
            }
            (None, Some(_)) => {
                return Err("--tls-cert needs --tls-ca (the cluster's CA certificate)".into());
            }
            (None, None) => None,
        };
        Ok(ClientTransport::new(token, tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Request;
    use tonic::service::Interceptor;

    #[test]
    fn token_goes_into_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "secret-token-0123456789\n").unwrap();
        let args = AccessArgs {
            token_file: Some(p.clone()),
            ..Default::default()
        };
        let transport = args.load().unwrap();
        let r = transport.credentials().call(Request::new(())).unwrap();
        assert_eq!(
            r.metadata().get("authorization").unwrap(),
            "Bearer secret-token-0123456789"
        );
        let bad = AccessArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..Default::default()
        };
        assert!(bad.load().unwrap_err().contains("cannot read"));
        std::fs::write(&p, "short\n").unwrap();
        let short = AccessArgs {
            token_file: Some(p),
            ..Default::default()
        };
        assert!(short.load().unwrap_err().contains("at least 16"));
    }
}
