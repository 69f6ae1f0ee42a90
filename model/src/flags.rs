//! Values that several programs read from flags and files: `HOST:PORT` addresses,
//! `ID@HOST:PORT` peer lists and sizes such as `16GiB`. The agent's flags, the hosts file and
//! the CLI's `mozen node add` read them with the same functions, so a bad value is reported
//! the same way everywhere: the flag, the value as typed, and what is expected.

use crate::NodeId;

/// A flag that does not make sense, with the text to show the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// `--FLAG 'VALUE': WHY`.
    pub fn bad(flag: &str, value: &str, why: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("--{flag} '{value}': {why}"))
    }
}

/// A peer from `--peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

/// Checks HOST:PORT, quoting the flag on error.
pub fn parse_host_port(flag: &str, whole: &str, s: &str) -> Result<String, ConfigError> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(ConfigError::bad(
            flag,
            whole,
            format!("'{s}' is not HOST:PORT"),
        ));
    };
    if host.is_empty() {
        return Err(ConfigError::bad(flag, whole, format!("'{s}' has no host")));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(s.to_string()),
        _ => Err(ConfigError::bad(flag, whole, "port must be 1-65535")),
    }
}

/// The `--peers` value naming `addrs` as nodes 1, 2, ... in order.
pub fn peers_arg(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}@{a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `ID@HOST:PORT[,...]`.
pub fn parse_peers(s: &str) -> Result<Vec<Peer>, ConfigError> {
    let mut out: Vec<Peer> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('@') else {
            return Err(ConfigError::bad("peers", part, "expected ID@HOST:PORT"));
        };
        let id: NodeId = match id.parse() {
            Ok(i) if i > 0 => i,
            _ => {
                return Err(ConfigError::bad(
                    "peers",
                    part,
                    "id must be a positive integer",
                ));
            }
        };
        let addr = parse_host_port("peers", part, addr)?;
        if out.iter().any(|p| p.id == id) {
            return Err(ConfigError::bad(
                "peers",
                part,
                format!("id {id} is listed twice"),
            ));
        }
        out.push(Peer { id, addr });
    }
    Ok(out)
}

/// Parses sizes such as `512MiB`, `16GiB`, `2G`, `1000`.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0_f64.powi(4),
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("2G"), Some(2_000_000_000));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
    }
}
