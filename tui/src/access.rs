//! How the console gets into a secured cluster: the cluster token (sent as
//! `authorization: Bearer <token>` on every RPC) and TLS with the cluster CA and, for agents
//! that demand one, a client certificate. Same flags and environment variables as `mozen`;
//! the flags become a `ClientTransport` of mozen-client, which puts them on every channel.

/// The console's security flags: the client library's, as `mozen` has them.
pub use mozen_client::ClientArgs as AccessArgs;

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
        let transport = args.transport().unwrap();
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
        assert!(bad.transport().unwrap_err().contains("needs --tls-ca"));
        let unreadable = AccessArgs {
            tls_ca: Some(dir.path().join("no-ca.pem")),
            ..Default::default()
        };
        assert!(unreadable.transport().unwrap_err().contains("cannot read"));
        std::fs::write(&p, "short\n").unwrap();
        let short = AccessArgs {
            token_file: Some(p),
            ..Default::default()
        };
        assert!(short.transport().unwrap_err().contains("at least 16"));
    }
}
