//! `mozen chaos`: the command-line face of a chaos run.

use super::{ChaosConfig, ChaosError, Fault};
use std::path::PathBuf;

/// Runs real agents under a seeded nemesis and checks what they acknowledged.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Agents to start on 127.0.0.1 (3 to 7).
    #[arg(long, default_value_t = 5)]
    pub agents: usize,
    /// How long the workload and the faults run, e.g. 60s, 10m (the checks come after).
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// Seed of the fault schedule and the workload (default: from the clock, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Faults to inject: any of kill, pause, partition, restart (or none).
    #[arg(long, default_value = "kill,pause,partition,restart")]
    pub faults: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Directory for data dirs, agent logs and history.jsonl (default: a temporary one,
    /// removed after a run without violations).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The mozen-agent binary (default: the one next to this mozen).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ChaosArgs {
    /// Validates the flags into a config; the second value is a temporary dir to remove.
    pub fn config(&self) -> Result<(ChaosConfig, Option<PathBuf>), ChaosError> {
        let duration = humantime::parse_duration(&self.duration).map_err(|e| {
            ChaosError::Usage(format!(
                "--duration '{}': {e} (examples: 30s, 10m)",
                self.duration
            ))
        })?;
        let faults = Fault::parse_list(&self.faults).map_err(ChaosError::Usage)?;
        let agent_bin = match &self.agent_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| ChaosError::Setup(format!("cannot locate this program: {e}")))?
                .with_file_name("mozen-agent"),
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let (dir, temp) = match &self.dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = std::env::temp_dir().join(format!("mozen-chaos-{seed}"));
                // Left over from an earlier run with this seed that found violations.
                let _ = std::fs::remove_dir_all(&d);
                (d.clone(), Some(d))
            }
        };
        let cfg = ChaosConfig {
            agent_bin,
            agents: self.agents,
            duration,
            seed,
            faults,
            clients: self.clients,
            dir,
        };
        cfg.validate()?;
        Ok((cfg, temp))
    }

    /// Runs and prints the report; violations make it an error.
    pub async fn run(&self) -> Result<(), ChaosError> {
        let (cfg, temp) = self.config()?;
        eprintln!(
            "mozen chaos: seed {}, {} agents, {:?}, files in {}",
            cfg.seed,
            cfg.agents,
            cfg.duration,
            cfg.dir.display()
        );
        let report = super::run(&cfg).await?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            println!("{report}");
        }
        if !report.violations.is_empty() {
            return Err(ChaosError::Violations(report.violations.len()));
        }
        if let Some(t) = temp {
            let _ = std::fs::remove_dir_all(t);
        }
        Ok(())
    }
}
