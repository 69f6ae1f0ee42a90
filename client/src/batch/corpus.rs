//! A deterministic text corpus for tests and benchmarks. The generator tallies every word it
//! writes, so a job's result can be checked against a count that never ran `wordcount`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `files` files of about `bytes_each` bytes into `dir` (created), returning their
/// paths and the lowercase word counts written. Lines start with a capitalized word and mix
/// several separators, so counting must split on punctuation and ignore case.
pub fn generate(
    dir: &Path,
    files: usize,
    bytes_each: usize,
) -> std::io::Result<(Vec<PathBuf>, BTreeMap<String, u64>)> {
    std::fs::create_dir_all(dir)?;
    let syllables = [
        "ka", "ro", "mi", "tsu", "ne", "bla", "qu", "or", "ze", "li", "pha", "u",
    ];
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let vocab: Vec<String> = (0..2000)
        .map(|_| {
            let n = 1 + rng.below(4);
            (0..n)
                .map(|_| syllables[rng.below(syllables.len() as u64) as usize])
                .collect()
        })
        .collect();
    let mut counts = BTreeMap::new();
    let mut paths = Vec::new();
    for f in 0..files {
        let mut text = String::with_capacity(bytes_each + 200);
        while text.len() < bytes_each {
            let words = 3 + rng.below(12);
            for i in 0..words {
                let w = &vocab[rng.below(vocab.len() as u64) as usize];
                *counts.entry(w.clone()).or_insert(0u64) += 1;
                if i == 0 {
                    let mut c = w.chars();
                    text.extend(c.next().map(|c| c.to_ascii_uppercase()));
                    text.push_str(c.as_str());
                } else {
                    text.push_str([" ", ", ", " - ", "; "][rng.below(4) as usize]);
                    text.push_str(w);
                }
            }
            text.push_str(".\n");
        }
        let path = dir.join(format!("part-{f:04}.txt"));
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok((paths, counts))
}
