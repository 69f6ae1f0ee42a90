//! Errors of the console's library parts. Each message quotes the bad value and says what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{flag} '{value}': {reason}")]
    BadAddress {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "{} not found: --demo starts the mozen-agent binary that sits next to mozen-console; build it with `cargo build -p mozen-agent` (same profile)",
        path.display()
    )]
    AgentMissing { path: PathBuf },
    #[error("--demo: cannot start {what}: {source}")]
    DemoStart {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--demo: agent {id} exited at once ({status}); its log:\n{log}")]
    DemoAgentExited {
        id: usize,
        status: String,
        log: String,
    },
}

/// Splits and checks `HOST:PORT[,HOST:PORT...]`.
pub fn parse_addrs(flag: &'static str, s: &str) -> Result<Vec<String>, ConsoleError> {
    let bad = |value: &str, reason: &str| ConsoleError::BadAddress {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let addrs: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.strip_prefix("http://").unwrap_or(a).to_string())
        .collect();
    if addrs.is_empty() {
        return Err(bad(
            s,
            "expected HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:7070",
        ));
    }
    for a in &addrs {
        let Some((host, port)) = a.rsplit_once(':') else {
            return Err(bad(a, "expected HOST:PORT, e.g. 127.0.0.1:7070"));
        };
        if host.is_empty() {
            return Err(bad(a, "the host is empty"));
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(bad(a, "port must be 1-65535"));
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(
            parse_addrs("--addr", "a:1, http://b:2").unwrap(),
            ["a:1", "b:2"]
        );
        let e = parse_addrs("--addr", "a:1,b:99999")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--addr 'b:99999': port must be 1-65535");
        assert!(parse_addrs("--addr", "nohost").is_err());
        assert!(parse_addrs("--addr", " , ").is_err());
    }
}
